"""The engines (how a process waits) and the prefork master; servers/lifecycle.py is the life they share."""

from __future__ import annotations

import importlib
from typing import Any

# Each engine's module and class, by the name `--engine` and webmodels.config use: an engine's registration.
# Imported on first use, in the process that serves: an engine may need to be the first thing its process
# imports (gevent patches the standard library), and a prefork master must not run what only workers run.
ENGINES = {"sync": ("sync", "SyncEngine"), "threads": ("threadpool", "ThreadsEngine"),
           "loop": ("eventloop", "LoopEngine"), "gevent": ("greenthreads", "GeventEngine")}
# What a prefork master imports before it forks, so that its workers share those pages copy-on-write instead of
# each importing (and owning) its own copy: the engine's module, which imports the whole application — ~8 MiB
# a worker, the difference between a worker's RSS and its PSS that exercise 6 shows. An engine that patches its
# process when imported (gevent) is the exception: its module must be the worker's own first import, so the
# master imports only what patching would import (gevent's modules; ~100 ms a worker), never runs it (gunicorn's
# arbiter likewise loads the gevent worker class).
PRELOAD = {"gevent": ("gevent.monkey", "gevent.socket", "gevent.select", "gevent.selectors", "gevent.ssl",
                      "gevent.subprocess", "gevent.thread", "gevent.threading", "gevent.time", "gevent.os",
                      "gevent.signal", "gevent.queue", "gevent.event", "gevent.local", "gevent.lock")}


def engine_factory(engine: str) -> Any:
    """The class of ENGINE (its constructor is lifecycle.EngineFactory), imported now."""
    module, cls = ENGINES[engine]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def preload(engine: str) -> None:
    """In a prefork master, before the first fork: import what ENGINE's workers would each import again."""
    for module in PRELOAD.get(engine) or (f"{__name__}.{ENGINES[engine][0]}",):
        importlib.import_module(module)
