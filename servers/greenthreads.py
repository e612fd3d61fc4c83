"""The gevent engine: green threads — blocking code, one OS thread, a greenlet per connection, scheduled by gevent.

It runs alone as the `greenthreads` model (one process) and inside every worker of `prefork --engine gevent`
(gunicorn `-k gevent -w N`): the same code, given a listening socket.

# What patching does, and why it comes first
`gevent.monkey.patch_all()` replaces the standard library's blocking calls — `socket`, `select`, `time.sleep`,
`threading`, `ssl`, … — with versions that, instead of blocking the OS thread, switch to gevent's *hub* (a libev
loop), which runs another greenlet until the awaited socket is ready or the timer fires. It must run before
anything imports those modules, or they keep the originals (a `from time import sleep` made earlier would block
everyone): so this module patches on its first lines, `webmodels serve greenthreads` imports it before anything
else, and a prefork worker imports it right after its fork (the master stays unpatched, as gunicorn's does).
What it cannot patch: a call into C that blocks without going through those functions — a C library's sleep, a
driver's socket, a long computation. `/io-in-c` is such a call (ctypes nanosleep): it blocks the hub, and with it
every greenlet of the process.

# What each greenlet owns
One greenlet per connection, for the connection's whole life: its socket and its policy state
(webmodels.connection), and the handler while it runs — the *same* blocking path as the sync and threads engines
(servers/blocking.py, `dispatch_sync`), unchanged: an effect's `time.sleep` is patched, so it yields. The acceptor
is a greenlet too; `--greenlets N` bounds the connections served at once, and when they are all taken the
policy's admission rule applies as for the pool's threads: up to `--queue` new connections wait for one, the
next gets a fast 503. A greenlet's stack lives on the heap: an idle connection costs a few KiB and no OS thread.
Nothing is locked: greenlets switch only where a patched call waits.

# How it fails — the code of threads, the failure modes of a loop
- The kernel sees one thread: context switches between greenlets are user-space jumps it never counts.
- CPU (`/cpu?ms=`), `/fault/hang` and `/io-in-c` never switch: until they return, no other greenlet runs — every
  connection of the process stalls, its deadlines and signals wait. The hub's lag (a greenlet that ticks,
  servers/lifecycle.py's `Ticker`) shows it; under a master a worker whose hub misses its ticks for longer than
  `--timeout` is killed, like a loop worker.
- A crash ends the process: every in-flight request is lost (a worker's share under a master).
- Races: `/counter?mode=unsafe` loses updates only where the handler yields between read and write (its `Sleep`).

# How it stops
servers/lifecycle.py decides the kind of stop (signals through gevent's hub); here: the acceptor stops, the listen
queue is drained when ours to drain, and every connection ends by the policy's rule at a stop — each greenlet
waiting for its client is woken to look at its deadline again — within `--graceful-timeout`.
"""

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()  # first: see the essay

import select  # noqa: E402
import socket  # noqa: E402
from collections import deque  # noqa: E402
from typing import Any, Callable  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.hub import Waiter  # noqa: E402

from webmodels.config import Config  # noqa: E402
from webmodels.log import log  # noqa: E402
from webmodels.runtime import LAG_INTERVAL, Runtime  # noqa: E402

from . import blocking  # noqa: E402
from .lifecycle import (DRAIN_QUIET_S, STOP_SIGNALS, Lifecycle, Ticker, monotonic, serve_alone,  # noqa: E402
                        unblock_stop_signals)


class GeventEngine:
    runners = 0  # one OS thread multiplexes everything: the hub ticks instead

    def __init__(self, config: Config, sock: socket.socket, rt: Runtime, life: Lifecycle) -> None:
        self.rt, self.life, self.policy = rt, life, life.policy
        # Made before the patch (a prefork master's): wrap its descriptor in a cooperative socket.
        self.listener = socket.socket(sock.family, sock.type, fileno=sock.detach())
        self.listener.setblocking(False)
        self.greenlets = config.greenlets
        self.held: dict[Any, tuple[socket.socket, Any]] = {}  # greenlet → (socket, policy Connection)
        self.line: deque[socket.socket] = deque()  # accepted, waiting for a greenlet (at most --queue)
        self.rejected_503 = 0
        self.stop_requested = gevent.event.Event()
        self.hub = gevent.get_hub()
        self.waiting: set[Waiter] = set()  # connections waiting for their client: a stop wakes them
        self.ticker = Ticker(rt)
        self.acceptor: gevent.Greenlet | None = None
        self.tick: gevent.Greenlet | None = None

    # -- the lifecycle's side ------------------------------------------------------------------------------------
    def install_signals(self, handler: Callable[[str], None]) -> None:
        for sig in STOP_SIGNALS:
            gevent.signal_handler(sig, handler, sig.name)  # run by the hub, in a greenlet of its own
        unblock_stop_signals()

    def wake(self) -> None:
        self.stop_requested.set()
        for waiter in list(self.waiting):
            self.hub.loop.run_callback(self._look_again, waiter)  # a Waiter is switched to from the hub only

    def _look_again(self, waiter: Waiter) -> None:
        if waiter in self.waiting:  # still waiting (its own watcher may have woken it meanwhile)
            waiter.switch(None)

    def serve(self) -> None:
        self.tick = gevent.spawn(self._tick)
        self.acceptor = gevent.spawn(self._accept_loop)
        self.stop_requested.wait()

    def stop_accepting(self, drain_queue: bool) -> int:
        if self.acceptor is not None:
            self.acceptor.kill()
        taken, quiet_since = 0, monotonic()
        while drain_queue and not self.life.fast and monotonic() - quiet_since < DRAIN_QUIET_S:
            sock = self._accept()
            if sock is None:
                gevent.sleep(0.002)
                continue
            taken, quiet_since = taken + 1, monotonic()
            self._start(sock)  # a stop admits what it accepted
        self.listener.close()
        return taken

    def finish(self, deadline: float) -> bool:
        while (self.held or self.line) and not self.life.fast and monotonic() < deadline:
            gevent.sleep(0.02)
        return not (self.held or self.line)

    def abort_all(self) -> None:
        for g, (sock, c) in list(self.held.items()):
            if c is None:
                sock.close()
            else:
                blocking.abort(sock, c)
            g.kill(block=False)
        for sock in self.line:
            sock.close()

    def close(self) -> None:
        if self.tick is not None:
            self.tick.kill()

    def stats(self) -> dict[str, Any]:
        """The figures only the hub knows: greenlets, connections held and waiting, the hub's lag."""
        lag = self.ticker.stats()
        return {"greenlets": len(self.held) + 2, "greenlet_pool_size": self.greenlets, "connections": len(self.held),
                "queued": len(self.line), "rejected_503": self.rejected_503, **lag,
                "hub_lag_ms": lag["loop_lag_ms"], "hub_lag_max_ms": lag["loop_lag_max_ms"]}

    # -- greenlets -------------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while True:
            sock = self._accept()
            if sock is None:
                select.select([self.listener], [], [])  # patched: the hub waits, every other greenlet runs
                continue
            if len(self.held) < self.greenlets:
                self._start(sock)
            elif self.policy.admits(busy=len(self.held), runners=self.greenlets, waiting=len(self.line)):
                self.line.append(sock)
            else:
                self.rejected_503 += 1
                blocking.reject(sock, self.policy.connection(monotonic()))

    def _accept(self) -> socket.socket | None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            gevent.sleep(0.01)
            return None
        self.rt.connection_accepted()
        sock.setblocking(False)  # errors, not waits, from recv/send: servers/blocking.py waits itself
        return sock

    def _start(self, sock: socket.socket) -> None:
        g = gevent.spawn(self._connection, sock)
        self.held[g] = (sock, None)

    def _connection(self, sock: socket.socket) -> None:
        """One greenlet: serve SOCK, then the next connection waiting in line, until none waits."""
        me = gevent.getcurrent()
        while sock is not None:
            c = self.policy.connection(monotonic())
            self.held[me] = (sock, c)
            try:
                blocking.serve(sock, c, self.rt, self._wait)
            except Exception:
                log.exception("unexpected error in a connection's greenlet")
                blocking.abort(sock, c)
            sock = self.line.popleft() if self.line else None
        del self.held[me]

    def _wait(self, sock: socket.socket, timeout: float | None) -> None:
        """Wait in the hub for SOCK's bytes, its deadline, or a stop (deadlines move at a stop: look again).

        One read watcher and one timer, switched back to by whichever fires first (a patched select.poll would
        build a poller and a watcher per fd each time: twice the CPU per request).
        """
        loop = self.hub.loop
        waiter = Waiter(self.hub)
        io = loop.io(sock.fileno(), 1)
        io.start(waiter.switch, None)
        timer = None
        if timeout is not None:
            timer = loop.timer(timeout)
            timer.start(waiter.switch, None)
        self.waiting.add(waiter)
        try:
            waiter.get()
        finally:
            self.waiting.discard(waiter)
            io.close()
            if timer is not None:
                timer.close()

    def _tick(self) -> None:
        """Sleep LAG_INTERVAL, record how late the hub woke us: its lag, and its heartbeat."""
        while True:
            t0 = monotonic()
            gevent.sleep(LAG_INTERVAL)
            self.ticker.ticked(t0, monotonic())


def serve(config: Config) -> int:
    """Run the greenthreads model — the gevent engine alone in one process — until a signal stops it."""
    return serve_alone(GeventEngine, config, f"greenlets={config.greenlets}")
