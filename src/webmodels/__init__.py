"""webmodels: one HTTP handler under several I/O models (threads, processes, an event loop, hybrids), for workshops."""

__version__ = "0.1.0"
