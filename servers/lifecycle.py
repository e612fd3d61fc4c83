"""One engine lifecycle: how every engine starts, is told to stop, drains and leaves — alone or as a worker.

An engine (sync, threads, loop, …) owns only *how it waits*. Everything else about its life is here, written
once, so the same signal gives the same stop, the same log lines and the same exit code whatever waits on the
socket (gunicorn keeps this in `workers/base.py`, uvicorn in `server.py`).

# What an engine provides (the `Engine` protocol below)
`serve()` — accept and serve until the lifecycle says stop (it looks at `life.reason` after every wake-up);
`wake()` — make it look now (safe from a signal handler and from any thread); `stop_accepting(drain_queue)` —
stop taking connections, first taking what the kernel already queued when asked; `finish(deadline)` — let
what it holds end under the policy's stop rule until nothing is held, the deadline passes or the stop turns
fast; `abort_all()` — reset what it still holds; `stats()` — the figures only it knows; `close()`.
An engine that handles signals its own way (an event loop, a gevent hub) provides `install_signals(handler)`
and calls `unblock_stop_signals()` once its handlers are live (a loop listens only while it runs); the others
get Python handlers that write to their `wakeup_fd()` (`signal.set_wakeup_fd`).

# The kinds of stop
| cause                                  | kind     | listen queue drained?                  | exit status     |
|----------------------------------------|----------|----------------------------------------|-----------------|
| SIGTERM (alone, or the master's stop)  | graceful | yes, when our copy of the listener is the last to close (alone; a worker whose master is stopping or closing its listener) | 0 |
| SIGTERM from a master's retire (SIGHUP, SIGTTOU) | graceful | no: the listener lives on in the master, the siblings and the replacement accept from it | 0 |
| `--max-requests` reached (the policy says "exhausted" once) | graceful (recycle) | as above | `EXIT_RECYCLED` |
| SIGINT, SIGQUIT, or a second SIGTERM   | fast     | no                                     | 0               |

Graceful: stop accepting (after draining the queue when it is ours to drain), then every held connection
ends by the policy's rule at a stop (webmodels.connection: idle ones at once, silent ones within a second,
half-sent heads by their deadline, requests being served answered with `Connection: close`), all within
`--graceful-timeout`; what is left then is aborted. Fast: stop accepting and abort everything now.

The log says the same in every engine: `shutdown (SIGTERM): stop accepting; N in flight, waiting up to Gs`,
then `shutdown: drained in …; bye` only when nothing was forced, else `graceful timeout …; forcing N`.

# Liveness
Engines with handler threads (sync 1, threads N) publish `runners`: the runtime's `busy_since` says since
when all of them are busy (a master kills a worker stuck so for longer than `--timeout`). An engine whose one
thread multiplexes everything (loop, gevent hub) cannot be watched from a side thread that answers for it;
it ticks instead: a task on the loop itself sleeps `LAG_INTERVAL` and records how late it woke (`Ticker`),
which is its lag and its heartbeat. Alone, `--watchdog S` (a real thread) exits the process when the tick is
older than S (`Watchdog`); under a master, the master reads the heartbeat from the board.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Protocol

from webmodels.config import Config
from webmodels.connection import Limits, Policy
from webmodels.exitcodes import EXIT_RECYCLED, EXIT_WATCHDOG
from webmodels.listen import log_startup, make_listener
from webmodels.log import log
from webmodels.runtime import LAG_INTERVAL, Runtime, loop_lag_ms

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
GRACEFUL = ("SIGTERM", "max-requests")
DRAIN_QUIET_S = 0.02  # draining the listen queue ends once it has stayed empty this long
LAG_WINDOW = 10.0  # loop_lag_max_ms is the worst lag seen in this many seconds
monotonic = time.monotonic


class FastStop(BaseException):
    """Raised from a Python signal handler when the stop turns fast: out of whatever the main thread waits in.

    A BaseException, so the handler's `except Exception` (a 500) never swallows it.
    """


class Engine(Protocol):
    runners: int  # threads that run handlers (0: the engine ticks instead)

    def serve(self) -> None: ...
    def wake(self) -> None: ...
    def stop_accepting(self, drain_queue: bool) -> int: ...
    def finish(self, deadline: float) -> bool: ...
    def abort_all(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


EngineFactory = Callable[[Config, socket.socket, Runtime, "Lifecycle"], Engine]


class Lifecycle:
    """One process's life around its engine: signals → the kind of stop → drain → the exit status."""

    def __init__(self, config: Config, rt: Runtime, policy: Policy, alone: bool) -> None:
        self.config, self.rt, self.policy, self.alone = config, rt, policy, alone
        self.reason = ""  # what asked for the stop: "SIGTERM", "SIGINT", "SIGQUIT", "max-requests"; "" = none
        self.fast = False
        self.in_flight_at_fast = 0
        self.engine: Engine | None = None
        self._raise_fast = False  # Python handlers raise FastStop once the stop is fast (see install)

    # -- being told to stop (flags only: this runs in signal handlers and pool threads) ----------------------
    def request_stop(self, reason: str) -> None:
        """Ask for a stop for REASON; a second stop signal (or INT/QUIT during a graceful stop) makes it fast."""
        if not self.reason:
            self.reason = reason
            self.fast = reason not in GRACEFUL
            self.policy.drain(monotonic())
        elif reason in ("SIGINT", "SIGQUIT") or reason == self.reason == "SIGTERM":
            self.fast = True  # impatient
        if self.fast:
            self.in_flight_at_fast = self.rt.in_flight  # (FastStop may end them before we log it)
        if self.engine is not None:
            self.engine.wake()

    def _on_signal(self, signum: int, frame: object = None) -> None:
        self.request_stop(signal.Signals(signum).name)
        if self.fast and self._raise_fast:
            raise FastStop

    def install_signals(self, engine: Engine) -> None:
        """Route the stop signals to request_stop: the engine's own way, or Python handlers + its wake-up fd."""
        own = getattr(engine, "install_signals", None)
        if own is not None:
            own(lambda name: self.request_stop(name))  # it unblocks them once its handlers are live
            return
        self._raise_fast = True
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(engine.wakeup_fd(), warn_on_full_buffer=False)  # type: ignore[attr-defined]
        unblock_stop_signals()

    def drain_queue(self) -> bool:
        """Take what the kernel queued before closing our listener? Only when ours is the last copy to close."""
        return self.alone or self.rt.listener_closing()

    # -- the whole story ---------------------------------------------------------------------------------------
    def run(self, engine: Engine) -> int:
        """Serve with ENGINE until told to stop; drain as the kind of stop says; return the exit status."""
        self.engine = engine
        rt = self.rt
        rt.runners = engine.runners
        rt.engine_stats = self.stats
        self.policy.on_exhausted = lambda: self.request_stop("max-requests")
        t0, began, drained = 0.0, False, False
        try:
            self.install_signals(engine)
            engine.serve()
            t0 = monotonic()
            grace = 0.0 if self.fast else self.config.graceful_timeout
            log_shutdown_begin(self.reason, rt.in_flight, grace)
            began = True
            taken = engine.stop_accepting(drain_queue=not self.fast and self.drain_queue())
            drained = engine.finish(t0 + grace)
            if taken:
                log.info("shutdown: served %d connection(s) taken from the listen queue", taken)
            in_flight = rt.in_flight
        except FastStop:
            t0 = t0 or monotonic()
            in_flight = self.in_flight_at_fast
            if not began:
                log_shutdown_begin(self.reason, in_flight, 0.0)
        if not drained:
            engine.abort_all()
        log_shutdown_end(drained, in_flight, monotonic() - t0)
        engine.close()
        return EXIT_RECYCLED if self.reason == "max-requests" else 0

    def stats(self) -> dict[str, Any]:
        engine = self.engine
        out = engine.stats() if engine is not None else {}
        out["connection_ends"] = dict(self.policy.ends)
        return out


def unblock_stop_signals() -> None:
    """A prefork worker boots with the stop signals blocked (a TERM then waits for its handlers): let them come."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def run(factory: EngineFactory, config: Config, sock: socket.socket, rt: Runtime, *, max_requests: int = 0,
        alone: bool = False) -> int:
    """Build the engine FACTORY makes on SOCK and run its life; return the exit status."""
    policy = Policy(Limits.from_config(config, max_requests=max_requests), rt)
    life = Lifecycle(config, rt, policy, alone)
    return life.run(factory(config, sock, rt, life))


def serve_alone(factory: EngineFactory, config: Config, detail: str) -> int:
    """Run a model that is one engine in one process (threadpool, eventloop, …) until a signal stops it."""
    sock = make_listener(config)
    log_startup(config, sock, detail)
    return run(factory, config, sock, Runtime(config), alone=True)


# -- the shutdown lines every model says the same way (a prefork master too) -----------------------------------------
def log_shutdown_begin(reason: str, in_flight: int, graceful_timeout: float) -> None:
    log.info("shutdown (%s): stop accepting; %d in flight, waiting up to %gs", reason, in_flight, graceful_timeout)


def log_shutdown_end(drained: bool, in_flight: int, elapsed: float) -> None:
    if drained:
        log.info("shutdown: drained in %.3fs; bye", elapsed)
    else:
        log.warning("shutdown: graceful timeout after %.3fs; forcing %d in flight", elapsed, in_flight)


# -- liveness for the engines that tick -----------------------------------------------------------------------------
class Ticker:
    """How late the engine's own LAG_INTERVAL sleep woke: its lag, and its heartbeat (pushed to the runtime)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.tick = monotonic()  # read by the watchdog thread
        self.lag_ms = 0.0
        self.lags: collections.deque[tuple[float, float]] = collections.deque()  # (when, lag_ms)
        rt.heartbeat(self.tick, 0.0)

    def ticked(self, slept_at: float, now: float) -> None:
        """A LAG_INTERVAL sleep begun at SLEPT_AT ended at NOW."""
        lag_ms = max(0.0, (now - slept_at - LAG_INTERVAL) * 1000)
        self.tick, self.lag_ms = now, lag_ms
        self.rt.heartbeat(now, lag_ms)
        lags = self.lags
        lags.append((now, lag_ms))
        while lags[0][0] < now - LAG_WINDOW:
            lags.popleft()

    def stats(self) -> dict[str, float]:
        now = monotonic()
        # Not ticked for a while: the lag is at least that long, measured or not yet.
        lag_now = loop_lag_ms(self.tick, self.lag_ms, now)
        recent = [lag for when, lag in self.lags if when >= now - LAG_WINDOW]
        return {"loop_lag_ms": lag_now, "loop_lag_max_ms": round(max(recent + [lag_now]), 3)}


class Watchdog(threading.Thread):
    """Exit the process when the ticker's tick is older than LIMIT seconds (a supervisor restarts it).

    A reader of a fact only the ticking thread can produce; it never answers for that thread. (It needs the
    GIL, which a blocked loop in Python code or in time.sleep gives up every few ms; a C call that holds the
    GIL forever defeats it too.)
    """

    def __init__(self, ticker: Ticker, limit: float) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.ticker, self.limit = ticker, limit
        self._stopped = threading.Event()

    def run(self) -> None:
        period = min(0.25, self.limit / 4)
        while not self._stopped.wait(period):
            stalled = monotonic() - self.ticker.tick
            if stalled > self.limit:
                log.critical("watchdog: the event loop has not ticked for %.2fs (limit %gs); exiting with status %d "
                             "so a supervisor restarts the server", stalled, self.limit, EXIT_WATCHDOG)
                os._exit(EXIT_WATCHDOG)

    def stop(self) -> None:
        self._stopped.set()
