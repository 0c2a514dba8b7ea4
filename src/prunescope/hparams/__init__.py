"""Hyperparameter sensitivity under pruning: do the dense model's hyperparameters still hold?

:func:`study` runs the whole protocol (see :mod:`prunescope.hparams.study`) and returns an
:class:`HparamsResult` with every table. The pieces, one job each:

- :mod:`~prunescope.hparams.space`: the search space (TOML or Python), TrainConfig's knobs.
- :mod:`~prunescope.hparams.search`: dense tuning (TPE, GP, BOHB-like, random).
- :mod:`~prunescope.hparams.grid`: axes by importance, the grid around the optimum, its landscape.
- :mod:`~prunescope.hparams.degrees`: the pruned checkpoints, from prunescope's own stages.
- :mod:`~prunescope.hparams.trials`: what one trial trains.
- :mod:`~prunescope.hparams.studies`: the stages' studies (identity, resume) on :mod:`prunescope.trials`.
- :mod:`~prunescope.hparams.shift`: distance, regret, rank agreement, optimum and importance shifts, noise floors.
- :mod:`~prunescope.hparams.verdict`: up to which degree the dense hyperparameters hold.
"""

from prunescope.hparams.space import DEFAULT_SPACE, Space, load_space, parse_space
from prunescope.hparams.study import GRID_LIMIT, HparamsConfig, HparamsResult, study

__all__ = ["DEFAULT_SPACE", "GRID_LIMIT", "HparamsConfig", "HparamsResult", "Space", "load_space", "parse_space",
           "study"]
