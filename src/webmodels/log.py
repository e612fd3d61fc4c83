"""One log format for every model: time, pid, level, message."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
log = logging.getLogger("webmodels")
access = logging.getLogger("webmodels.access")


def setup(level: int = logging.INFO, access_log: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger("webmodels")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    access.setLevel(logging.INFO if access_log else logging.WARNING)
