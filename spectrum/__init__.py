"""Thinking Spectrum: tunable reasoning depth by merging a direct and a thinking model."""

__version__ = "0.1.0"
