"""The loop engine: one thread, one event loop (uvloop), every connection of its process multiplexed on it.

It runs alone as the `eventloop` model (one process), and inside every worker of `prefork --engine loop` /
`hybrid-loop` (nginx, uvicorn `--workers N`): the same code, given a listening socket.

# What the one thread owns
Everything. One thread runs one loop (uvloop by default, `--loop asyncio`), created with the engine — in a
prefork worker that is after the fork, never in the master. The loop owns the listening socket, every connection
(servers/loopconn.py: an `asyncio.Protocol` holding its policy `Connection`, webmodels.connection, with its
parser inside), their deadlines (servers/deadlines.py: buckets, so a tick costs what came due, not a pass over
every connection), and the handler while it runs. Nothing runs concurrently with anything else: there is nothing to lock.

# How a request flows
The loop reads bytes and calls `HttpProtocol.data_received`, which feeds the policy; complete requests (several
when the client pipelines) are answered strictly in order. The fast path runs the handler right there:
`dispatch_fast` calls the route, and if it returns without yielding an effect the response goes to
`transport.write` before `data_received` returns — no task, no future, no trip round the loop. A route that must
wait (`/io` yields `Sleep`) comes back as a coroutine: the connection wraps it in one task and answers nothing
more until it has written its response. After every write the transport's buffer size goes to `conn.sending()`:
that is how the policy knows the response left (idle clock, after-hooks) or is stuck (send clock). Flow control:
past the transport's high-water mark (`pause_writing`), or with more than `MAX_QUEUED` pipelined requests
waiting, we stop reading that client: one that sends fast and reads slowly costs one buffer, not unbounded
memory. An idle keep-alive connection costs a protocol object, a policy `Connection` and a transport: a few KiB.

# How it fails
- Slow client: cheap. A trickling head holds a parser and a few hundred bytes, bounded by `--header-timeout`
  (408); a client that does not read holds its buffer until `--send-timeout` after the last progress (reset).
- Hung handler: blocks *everyone*. `/fault/hang` and `/cpu?ms=5000` run on the one thread; until they return no
  other connection is read, no deadline fires, no signal is handled — the lesson of this model. A side thread
  that answered "alive" for the loop would lie, so the loop measures itself (servers/lifecycle.py's `Ticker`):
  alone, `--watchdog S` exits when the tick is older than S; under a master, `--timeout` kills a worker whose
  heartbeat is that old.
- Crash: shared fate — `/fault/crash` ends the process and every connection in it (a worker's share under a
  master). Leak: every request's garbage lives in the one heap; nothing is recycled.

# How it stops
servers/lifecycle.py decides the kind of stop; signals reach it through the loop (`add_signal_handler`), so a
loop blocked by a hung handler notices them only when the handler returns. Here: when the listen queue is ours
to drain, keep a duplicate of the listening socket, close the loop's server and accept from the duplicate until
the queue stays empty (closing over it would reset requests clients already sent); then every connection ends by
the policy's rule at a stop (their deadlines moved: they are filed again), within `--graceful-timeout`.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable

from webmodels.config import Config
from webmodels.log import log
from webmodels.runtime import LAG_INTERVAL, Runtime

from .deadlines import BUCKET_S, Deadlines
from .lifecycle import (DRAIN_QUIET_S, STOP_SIGNALS, Lifecycle, Ticker, Watchdog, monotonic, serve_alone,
                        unblock_stop_signals)
from .loopconn import HttpProtocol


class LoopEngine:
    """The loop's top level: serve the listener, run the deadlines, tick, and do the loop's part of a stop."""

    runners = 0  # no handler thread to watch: the loop ticks instead

    def __init__(self, config: Config, sock: socket.socket, rt: Runtime, life: Lifecycle) -> None:
        self.config, self.sock, self.rt, self.life, self.policy = config, sock, rt, life, life.policy
        self.loop = new_loop(config.loop)
        asyncio.set_event_loop(self.loop)
        self.send_poll = max(BUCKET_S, config.send_timeout / 4)
        self.timers = Deadlines(monotonic())
        self.connections: set[HttpProtocol] = set()
        self.stopping = False
        self.stop_requested: asyncio.Future[None] = self.loop.create_future()
        self.listening: asyncio.AbstractServer | None = None
        self.ticker = Ticker(rt)
        self.helpers: list[asyncio.Task[None]] = []
        self.watchdog = Watchdog(self.ticker, config.watchdog) if life.alone and config.watchdog > 0 else None
        self.on_signal: Callable[[str], None] = lambda name: None

    # -- the lifecycle's side ----------------------------------------------------------------------------------
    def install_signals(self, handler: Callable[[str], None]) -> None:
        self.on_signal = handler  # installed by _serve, on the running loop: uvloop listens only while it runs

    def wake(self) -> None:
        # From the loop itself (a signal handler, the policy's max-requests): look at the lifecycle again.
        if not self.stop_requested.done():
            self.stop_requested.set_result(None)
        now = monotonic()
        for proto in self.connections:
            proto._arm(now)  # a stop moved their deadlines earlier (an idle one is due at once)

    def serve(self) -> None:
        self.loop.run_until_complete(self._serve())

    def stop_accepting(self, drain_queue: bool) -> int:
        return self.loop.run_until_complete(self._stop_listening(drain_queue))

    def finish(self, deadline: float) -> bool:
        return self.loop.run_until_complete(self._finish(deadline))

    def abort_all(self) -> None:
        for proto in list(self.connections):
            proto.abort()

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        loop = self.loop
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def stats(self) -> dict[str, Any]:
        """The figures only the loop knows."""
        return {"connections": len(self.connections), **self.ticker.stats()}

    # -- on the loop ------------------------------------------------------------------------------------------
    async def _serve(self) -> None:
        for sig in STOP_SIGNALS:
            self.loop.add_signal_handler(sig, self.on_signal, sig.name)
        unblock_stop_signals()  # a TERM that came while we booted is delivered now
        self.sock.setblocking(False)
        self.listening = await self.loop.create_server(lambda: HttpProtocol(self), sock=self.sock,
                                                       backlog=self.config.backlog)
        self.helpers = [self.loop.create_task(self._tick()), self.loop.create_task(self._run_deadlines())]
        if self.watchdog is not None:
            self.watchdog.start()
        if not self.life.reason:
            await self.stop_requested

    async def _stop_listening(self, drain_queue: bool) -> int:
        """Stop accepting; first, when the queue is ours to drain, take every connection the kernel queued.

        Closing a listening socket resets every connection still waiting in its accept queue — requests their
        clients already sent. So we keep a duplicate, let the loop's server close its own, and accept from the
        duplicate until the queue has stayed empty DRAIN_QUIET_S; those connections are served like any other.
        """
        self.stopping = True
        dup = None
        if drain_queue and self.sock.fileno() >= 0:
            try:
                dup = self.sock.dup()
            except OSError:
                dup = None
        if self.listening is not None:
            self.listening.close()
        self.sock.close()
        if dup is None:
            return 0
        dup.setblocking(False)
        taken, quiet_since = 0, monotonic()
        try:
            while not self.life.fast and monotonic() - quiet_since < DRAIN_QUIET_S:
                try:
                    conn, _ = dup.accept()
                except (BlockingIOError, InterruptedError):
                    await asyncio.sleep(0.002)
                    continue
                except OSError as exc:
                    log.debug("draining the listen queue: %s", exc)
                    break
                conn.setblocking(False)
                taken += 1
                quiet_since = monotonic()
                self.loop.create_task(self._adopt(conn))
        finally:
            dup.close()
        return taken

    async def _adopt(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: HttpProtocol(self), sock=conn)
        except OSError as exc:
            log.debug("adopting a queued connection: %s", exc)
            conn.close()

    async def _finish(self, deadline: float) -> bool:
        """Let every connection end by the policy's rule at a stop; True once none is left (before DEADLINE)."""
        await asyncio.sleep(0)  # let the adopted connections be made
        while self.connections and not self.life.fast and monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.connections

    async def _tick(self) -> None:
        """Sleep LAG_INTERVAL, record how late we woke: the loop measuring itself (its lag and heartbeat)."""
        ticked = self.ticker.ticked
        while True:
            t0 = monotonic()
            await asyncio.sleep(LAG_INTERVAL)
            ticked(t0, monotonic())

    async def _run_deadlines(self) -> None:
        """Every BUCKET_S, look at the connections whose bucket came due (and only those)."""
        timers = self.timers
        while True:
            await asyncio.sleep(BUCKET_S)
            now = monotonic()
            for key, bucket in timers.due(now):
                for proto in bucket:
                    if proto.wake == key:  # else a stale entry: the connection was re-filed earlier
                        proto.check(now)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(config: Config) -> int:
    """Run the eventloop model — the loop engine alone in one process — until a signal stops it."""
    return serve_alone(LoopEngine, config, f"loop={config.loop}")
