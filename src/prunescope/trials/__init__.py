"""Optuna studies shared by processes and machines: storage, planning, workers, status.

Every study of prunescope (the scan, the hyperparameter and the regime studies) records
each evaluation as one Optuna trial whose params identify the work (its *point*). The
pieces here are common to all of them:

- :mod:`~prunescope.trials.storage`: where a study lives (a journal file, PostgreSQL, or
  memory) with heartbeats, a lock for planning, and the detection of dead workers.
- :mod:`~prunescope.trials.queue`: idempotent planning (:func:`plan`: a point that is
  WAITING, RUNNING or finished anywhere is never queued again; a point whose trial died is
  queued again), :func:`run_queued`, the loop a worker runs, and :class:`Drain`, a
  worker's picklable handle on it.
- :mod:`~prunescope.trials.executors`: who runs :func:`run_queued`: this process
  (``local``), N spawned processes (``processes``) or Ray actors (``ray``).
- :mod:`~prunescope.trials.points`: a study of known points run to completion on an
  executor (:class:`QueuedStudy`, :class:`Execution`): the hyperparameter and regime studies.
- :mod:`~prunescope.trials.status`: done / running / failed / waiting, throughput, ETA.

A study built on these runs unchanged on any executor: it gives the executor a picklable
*drain* (``drain(limit) -> int``: evaluate up to ``limit`` queued trials of the shared
study, None for all, and say how many) and a *settle* callback for this process
(``settle() -> bool``: re-plan lost points, collect finished ones, say whether all are done).
"""
