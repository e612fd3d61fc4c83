"""webmodels: one HTTP handler under three I/O models, for workshops on concurrency."""

__version__ = "0.1.0"
