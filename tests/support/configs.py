"""The server configurations the tests run: one table, read by every suite that runs "every configuration".

Every engine (sync, threads, loop, gevent) alone where it runs alone, and each one under the prefork master, plus
the two hybrid names (the same engines as `prefork --engine threads|loop`, with their own defaults). A suite
that needs a subset picks rows by their facts (`engine`, `master`), never by a list of its own. The lab's
servers are another table (webmodels.lab.SERVERS: ports, env files, Locust classes): lab tests read that one.
"""

from __future__ import annotations

from dataclasses import dataclass

from webmodels.config import MASTER_MODELS


@dataclass(frozen=True)
class Config:
    id: str  # the test id
    model: str  # what `webmodels serve` is asked for
    engine: str  # what /_lab/stats says serves (webmodels.config.ENGINES)
    flags: tuple[str, ...] = ()  # the engine choice, for `prefork --engine …`
    size: tuple[str, ...] = ()  # how many workers a master runs here: 2 (a few forks, still more than one)
    one: tuple[str, ...] = ()  # the flags that leave a single worker / thread / greenlet to serve

    @property
    def master(self) -> bool:
        return self.model in MASTER_MODELS

    def argv(self, *extra: str, one: bool = False) -> tuple[str, ...]:
        """`webmodels serve` arguments (model first), with EXTRA flags; ONE: a single worker/thread/greenlet."""
        return (self.model, *self.flags, *(self.one if one else self.size), *extra)


TWO = ("--workers", "2")
CONFIGS: dict[str, Config] = {c.id: c for c in (
    Config("threadpool", "threadpool", "threads", one=("--threads", "1")),
    Config("eventloop", "eventloop", "loop"),  # one thread, one loop: one already
    Config("greenthreads", "greenthreads", "gevent", one=("--greenlets", "1")),
    Config("prefork", "prefork", "sync", size=TWO, one=("--workers", "1")),
    Config("prefork-threads", "prefork", "threads", ("--engine", "threads"), TWO, ("--workers", "1", "--threads", "1")),
    Config("prefork-loop", "prefork", "loop", ("--engine", "loop"), TWO, ("--workers", "1")),
    Config("prefork-gevent", "prefork", "gevent", ("--engine", "gevent"), TWO, ("--workers", "1", "--greenlets", "1")),
    Config("hybrid-threads", "hybrid-threads", "threads", one=("--workers", "1", "--threads", "1")),  # 2 workers
    Config("hybrid-loop", "hybrid-loop", "loop", one=("--workers", "1")),  # 2 workers by default
)}
# Every engine under the master (the prefork model with --engine): the master's duties, once per engine.
UNDER_MASTER = [c.id for c in CONFIGS.values() if c.model == "prefork"]
