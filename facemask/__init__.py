"""facemask: train, tune, track and serve a face-mask detector on Ray."""

__version__ = "0.1.0"
