"""The engines (how a process waits) and the prefork master; servers/lifecycle.py is the life they share."""

from __future__ import annotations

import importlib
from typing import Any

# Each engine's module and class, by the name `--engine` and webmodels.config use: an engine's registration.
# Imported on first use, in the process that serves: an engine may need to be the first thing its process
# imports (gevent patches the standard library), and a prefork master must not import what only workers run.
ENGINES = {"sync": ("sync", "SyncEngine"), "threads": ("threadpool", "ThreadsEngine"),
           "loop": ("eventloop", "LoopEngine")}


def engine_factory(engine: str) -> Any:
    """The class of ENGINE (its constructor is lifecycle.EngineFactory), imported now."""
    module, cls = ENGINES[engine]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
