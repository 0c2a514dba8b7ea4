"""prunescope: how far can each layer, and the whole model, be pruned?"""

__version__ = "0.1.0"
