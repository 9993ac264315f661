"""mlipdiv: structural vs conformational diversity for MLIP training data."""

__version__ = "0.1.0"
