"""Output: the result schema, verdict sentences, terminal tables, CSV and scan files, plots and the HTML page.

Read by the workflows (``prunescope.pipeline``, ``prunescope.cli``) only; nothing here computes a
result, and no library or study module imports it.

- :mod:`~prunescope.report.schema`: the ``result.json`` document and its version.
- :mod:`~prunescope.report.verdict`: the sentences that say what a result means.
- :mod:`~prunescope.report.tables`: Rich tables for the terminal and the files a command writes.
- :mod:`~prunescope.report.plots`: matplotlib figures.
- :mod:`~prunescope.report.html`: the self-contained ``report.html`` (Jinja2 templates in ``templates/``).
- :mod:`~prunescope.report.hparams`: the hyperparameter study's tables and CSVs.
"""
