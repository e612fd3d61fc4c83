"""What the handler may ask of the server running it, and where the engine puts the figures it reports.

One direction only: the engine *pushes* into its `Runtime` (requests through the handler's dispatch,
connections accepted, the loop's heartbeat) and hands it one callable, `engine_stats`, for the figures only
the engine can know (queued connections, open connections, worst recent loop lag). The runtime knows no
engine type and reaches into none: that callable is all it may call. This base class keeps its counters in the process's own memory — enough for `threadpool` and
`eventloop`, which are one process; a prefork worker's runtime (servers/board.py) keeps the same counters
in its slot of the shared-memory board, so any worker can report the whole server.

Liveness, as the master judges it, is published here too: `runners` is how many threads run handlers
(sync 1, threads N, loop 0). When all of them are busy, `busy_since` says since when the last one started;
a worker stuck like that for longer than `--timeout` serves nobody and is killed. The loop has no runner to
watch; its `heartbeat` (written by a task on the loop itself) going stale is what says it is stuck.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable

from .config import TICKING_ENGINES, Config

LAG_INTERVAL = 0.05  # how often a loop ticks its heartbeat; lag = how late that tick woke up


class Runtime:
    worker_index: int | None = None
    metrics: Any = None  # hook: the process's metrics.Metrics, made on first use by webmodels.metrics

    def __init__(self, config: Config) -> None:
        self.config = config
        self.model = config.model  # the name served: "hybrid-loop", not "prefork"
        self.engine = config.engine
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        # Set by an engine whose threads update these concurrently (the pool): then a lock, not bare `+=`, since
        # the numbers are the product. One thread alone needs none, and an uncontended lock still costs more
        # than the update it guards.
        self._lock: threading.Lock | None = None
        self.requests = 0
        self.in_flight = 0
        self.errors_4xx = 0
        self.errors_5xx = 0
        self.accepted = 0
        self.runners = 0  # threads that run handlers; 0 = liveness comes from the heartbeat instead
        self.busy_since = 0.0
        self.tick = 0.0  # last heartbeat (time.monotonic()); 0 = this engine does not tick
        self.lag_ms = 0.0
        self.engine_stats: Callable[[], dict[str, Any]] = dict
        # One thread counts here until shared_by_threads(): bind the unlocked updates directly, so a count
        # costs one call instead of two. (Not request_finished: its `started` defaults to True, _finished's
        # does not.)
        self.request_started = self._started  # type: ignore[method-assign]
        self.connection_accepted = self._accepted  # type: ignore[method-assign]

    def shared_by_threads(self) -> None:
        """Several threads will count here from now on: guard every update with a per-process lock."""
        self._lock = threading.Lock()
        for name in ("request_started", "connection_accepted"):
            self.__dict__.pop(name, None)  # back to the methods below, which take the lock

    # -- pushed by the handler's dispatch -------------------------------------------------------------------
    def request_started(self) -> None:
        if self._lock is None:
            return self._started()
        with self._lock:
            self._started()

    def request_finished(self, status: int, started: bool = True) -> None:
        if self._lock is None:
            return self._finished(status, started)
        with self._lock:
            self._finished(status, started)

    # -- pushed by the engine ----------------------------------------------------------------------------------
    def connection_accepted(self) -> None:
        if self._lock is None:
            return self._accepted()
        with self._lock:
            self._accepted()

    # -- where the counts are kept (a worker keeps them in its board slot instead) -----------------------------
    def _started(self) -> None:
        self.in_flight += 1
        if self.in_flight == self.runners:
            self.busy_since = time.monotonic()

    def _finished(self, status: int, started: bool) -> None:
        if started:
            self.in_flight -= 1
            self.busy_since = 0.0
        self.requests += 1
        if 400 <= status < 500:
            self.errors_4xx += 1
        elif status >= 500:
            self.errors_5xx += 1

    def _accepted(self) -> None:
        self.accepted += 1

    def heartbeat(self, now: float, lag_ms: float) -> None:
        """The loop ticked at NOW, LAG_MS late (called from the loop itself: proof that it runs)."""
        self.tick, self.lag_ms = now, lag_ms

    # -- read by the handler -------------------------------------------------------------------------------------
    def requests_here(self) -> int:
        return self.requests

    def counters(self) -> dict[str, Any]:
        out = {"requests": self.requests, "in_flight": self.in_flight,
               "errors_4xx": self.errors_4xx, "errors_5xx": self.errors_5xx}
        out.update(self.engine_stats())
        return out

    def per_worker(self) -> list[dict[str, Any]]:
        """One entry per process that serves: here, this one (index 0)."""
        return [{**worker_entry(os.getpid(), 0, self.engine, self.accepted, self.requests, self.in_flight,
                                self.tick, self.lag_ms), "booted": True}]

    def listener_closing(self) -> bool:
        """Will our listener close with us (so what its queue holds must be served first)? Alone: always."""
        return True

    # -- the process tree ------------------------------------------------------------------------------------
    def process_roles(self) -> dict[int, str]:
        return {os.getpid(): "main"}

    def server_pid(self) -> int:
        """The pid whose death is the server's death (the master for the master models)."""
        return os.getpid()

    # -- kills --------------------------------------------------------------------------------------------------
    def worker_pids(self) -> list[int]:
        return []

    def scale(self, delta: int) -> int | None:
        """Change the number of workers by DELTA; return the new target (None: the model has no workers)."""
        return None

    def kill_process(self) -> None:
        """Kill the whole server at once, as `kill -9` would."""
        os.kill(os.getpid(), signal.SIGKILL)


def loop_lag_ms(tick: float, lag_ms: float, now: float | None = None) -> float:
    """The loop's lag now: what it last measured, or longer if it has not ticked since (a stuck loop cannot say)."""
    now = time.monotonic() if now is None else now
    overdue = max(0.0, (now - tick - LAG_INTERVAL) * 1000)
    return round(max(lag_ms, overdue), 3)


def worker_entry(pid: int, index: int, engine: str, accepted: int, requests: int, in_flight: int,
                 tick: float, lag_ms: float) -> dict[str, Any]:
    """One row of /_lab/stats "per_worker". busy_threads: handlers running (one per thread) — null for the loop;
    loop_lag_ms: null for the engines without a loop."""
    ticks = engine in TICKING_ENGINES
    return {"pid": pid, "index": index, "engine": engine, "accepted": accepted, "requests": requests,
            "in_flight": in_flight, "busy_threads": None if ticks else in_flight,
            "loop_lag_ms": loop_lag_ms(tick, lag_ms) if ticks else None}
