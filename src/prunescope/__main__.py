"""``python -m prunescope``: the same command line as ``prunescope``."""

from prunescope.cli import main

main()
