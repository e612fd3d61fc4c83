"""The loop engine: one thread, one event loop (uvloop), every connection of its process multiplexed on it.

It runs alone as the `eventloop` model (one process, `serve()` below), and inside every worker of
`prefork --engine loop` / `hybrid-loop` (nginx, uvicorn `--workers N`): the same code, given a listening
socket and a runtime by whoever hosts it.

# What the one thread owns
Everything. One thread runs one loop (uvloop by default, `--loop asyncio` for the standard one), created
in `run()` and nowhere earlier — in a prefork worker that means after the fork, never in the master. The
loop owns the listening socket, every connection (an `asyncio.Protocol` with its own sans-IO
`RequestParser`), the timers, and the handler while it runs. There is nothing to lock in the engine itself
because nothing runs concurrently with anything else: a request is handled between two returns to the
loop. The only other thread is the optional watchdog (the `eventloop` model only), which reads one
timestamp and never touches a connection.

# How a request flows
The loop reads bytes and calls `HttpProtocol.data_received`, which feeds the parser. Complete requests
(several at once when the client pipelines) go to the connection's queue and are answered strictly in
order. The fast path runs the handler right there: `dispatch_fast` drives the handler's generator, and if
it finishes without yielding an effect (hello, bytes, cpu, stats...) the response is rendered and handed to
`transport.write` before `data_received` returns — no task, no future, no extra trip round the loop. A
route that must wait (`/io` yields `Sleep`) comes back as a coroutine; the connection wraps it in one task,
stops answering its queue until that task has written its response, then carries on with the queue. So
there is at most one task per connection, and only while a request is waiting.

Writes are flow-controlled. When the transport's buffer passes its high-water mark the loop calls
`pause_writing`: we stop answering (the queue waits) and stop reading from that client. We also stop
reading when more than `MAX_QUEUED` pipelined requests are waiting. Reading resumes when both clear.
A client that sends fast but reads slowly thus costs us one buffer, not unbounded memory.

# How it fails
- **Slow client**: cheap. A connection trickling its head holds a parser and a few hundred bytes, not a
  thread; the header timeout (408, then close) bounds it. A client that never reads a large response
  only holds its transport buffer (there is no write timeout: an admitted limit).
- **Hung handler**: blocks *everyone*. `/fault/hang` and `/cpu?ms=5000` run inline on the one thread; until
  they return no other connection is read, no timer fires, no signal is handled. That is the lesson of
  this model, not a bug: the loop is fast only as long as every handler yields quickly. `loop_lag_ms` in
  `/_lab/stats` shows it.
- **Crash**: shared fate. `/fault/crash` (or a segfault) ends the one process, and with it every
  connection and every in-flight request — all of them in the `eventloop` model, one worker's share
  under a master.
- **Leak**: shared too. Every request's garbage lives in the one heap; nothing is recycled.

# Keep-alive policy
An idle keep-alive connection costs a parser and a socket, not a thread, so we keep them: a connection
idle for `--keepalive` seconds after its last response is closed; `--keepalive 0` closes after each
response. A connection that has sent nothing at all gets `--header-timeout` and is then closed silently;
one that started a head and did not finish it in `--header-timeout` gets 408 and is closed. One periodic
sweep (every ≤ 0.5 s) checks every connection, which is far cheaper at 50k rps than arming and cancelling
a timer handle per request; the price is that a timeout fires up to one sweep late.

# The watchdog, and why a side thread is right here
Blocking work blocks the loop, so anything that must notice "the loop is stuck" cannot run on the loop.
uvicorn's multi-worker supervisor pings each worker, and the worker answers from a side thread: the ping
succeeds while the loop is wedged, so the supervisor never restarts it. The fix is to measure from
*inside* the loop: a task sleeps `LAG_INTERVAL`, measures how late it woke (`loop_lag_ms`) and writes a
tick timestamp. With `--watchdog S` a thread reads that tick; if the loop has not ticked for more than
S seconds it logs and `os._exit(EXIT_WATCHDOG)`, so a supervisor (Docker, systemd, `webmodels up`)
restarts the process. The thread is a *reader* of a fact only the loop can produce; it never speaks for
the loop. (It needs the GIL to run, which a blocked loop in Python code or in `time.sleep` gives up every
few milliseconds; a C extension that holds the GIL forever would defeat it too.)

Under a master there is no watchdog thread at all: the same tick goes to the worker's slot of the board
(`heartbeat`), and the master — another process, immune to anything this one does — kills a worker whose
heartbeat is older than `--timeout` (SIGABRT, then SIGKILL) and forks a fresh one. Its other workers keep
serving meanwhile. Several workers' loops watching one shared listening socket are all woken by each new
connection (a thundering herd: one accepts, the others find nothing); with `--reuseport` each worker has its
own listener and the kernel picks one.

# Shutdown
SIGTERM: stop accepting, close idle connections, let in-flight requests finish (each connection then
closes after its response) for up to `--graceful-timeout`, then abort the rest. SIGINT/SIGQUIT: abort at
once. Either way `run()` returns 0. `--max-requests` (in a worker): once the worker has answered that many
requests over all its connections, the same graceful shutdown, and `run()` returns EXIT_RECYCLED.
Signals are handled by the loop (`add_signal_handler`), so a loop blocked by a hung handler notices them
only when the handler returns — the watchdog (alone) or the master's `--timeout` (in a worker) exists for
that.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import threading
import time
from typing import Any, Callable

from webmodels.app import dispatch_fast, refuse
from webmodels.codec import TIMEOUT_408, HttpError, Request, RequestParser, Response, render
from webmodels.config import Config
from webmodels.exitcodes import EXIT_RECYCLED, EXIT_WATCHDOG
from webmodels.listen import (EXPECTED_NET_ERRORS, log_shutdown_begin, log_shutdown_end, log_startup,
                              make_listener)
from webmodels.log import log
from webmodels.runtime import LAG_INTERVAL, Runtime, loop_lag_ms

LAG_WINDOW = 10.0  # loop_lag_max_ms is the worst lag seen in this many seconds
MAX_QUEUED = 16  # pipelined requests waiting on one connection before we stop reading it
AFTER_FLUSH_WAIT = 1.0  # Response.after waits at most this long for the response bytes to leave


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse, answer in order, respect flow control and the timers."""

    def __init__(self, server: LoopEngine) -> None:
        self.server = server
        self.rt = server.rt
        self.loop = server.loop
        self.parser = RequestParser()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.queue: collections.deque[Request | HttpError] = collections.deque()
        self.task: asyncio.Task[None] | None = None  # the one request waiting on an effect, if any
        self.write_paused = False
        self.read_paused = False
        self.peer_eof = False
        self.closing = False
        self.lost = False
        self.served = 0
        self.waiting_since = time.monotonic()  # when we began waiting on the client (see sweep)

    # -- the transport's callbacks -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.rt.connection_accepted()
        if self.server.stopping:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        parser = self.parser
        was_in_head = parser.in_head
        events = parser.feed(data)
        # The head timer counts from the head's first byte; any other wait counts from the last activity.
        if events or not was_in_head:
            self.waiting_since = time.monotonic()
        if not events:
            return
        queue = self.queue
        queue.extend(events)
        if self.task is None:
            self._answer_queue()
        if len(queue) > MAX_QUEUED and not self.read_paused and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.peer_eof = True
        self._count_eof_error()
        # Half-closed: still answer what was asked (keep the transport open) unless nothing is pending.
        return self.task is not None or bool(self.queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.closing = True
        self.server.connections.discard(self)
        self._count_eof_error()
        # A waiting request is not cancelled: it finishes and its answer is dropped. Cancelling it
        # could leave a lock it holds (/counter?mode=locked) taken forever.
        if exc is not None:
            errno = getattr(exc, "errno", None)
            if errno in EXPECTED_NET_ERRORS:
                log.debug("connection lost: %s", exc)
            else:
                log.warning("connection lost: %r", exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if not self.read_paused and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.task is None:
            self._answer_queue()

    # -- answering ---------------------------------------------------------------------------------------------
    def _answer_queue(self) -> None:
        """Answer queued requests in order until one must wait, writing is paused, or we close."""
        queue, rt = self.queue, self.rt
        while queue and not self.write_paused and not self.closing:
            event = queue.popleft()
            if isinstance(event, HttpError):
                self.transport.write(refuse(event, rt))
                self._close()
                return
            result = dispatch_fast(event, rt)
            if isinstance(result, Response):
                self._respond(event, result)
            else:
                self.task = self.loop.create_task(self._finish(event, result))
                return
        if self.read_paused and not self.write_paused and len(queue) <= MAX_QUEUED // 2 and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()

    async def _finish(self, req: Request, pending: Any) -> None:
        """Await a request that waits on an effect, answer it, then go back to the queue."""
        try:
            resp = await pending
        finally:
            self.task = None
        if self.closing:
            return
        self._respond(req, resp)
        self.waiting_since = time.monotonic()
        self._answer_queue()

    def _respond(self, req: Request, resp: Response) -> None:
        self.served += 1
        server = self.server
        if server.max_requests and not server.stopping and self.rt.requests_here() >= server.max_requests:
            server.stop("max-requests")
        keep = (req.keep_alive and not resp.close and self.server.keepalive
                and not self.server.stopping and not (self.peer_eof and not self.queue))
        self.transport.write(render(resp, keep))
        if resp.after is not None:
            self._after_flush(resp.after, time.monotonic() + AFTER_FLUSH_WAIT)
        if not keep:
            self._close()

    def _after_flush(self, fn: Callable[[], None], deadline: float) -> None:
        """Run FN once the bytes written so far have left (or the connection is gone, or we waited enough)."""
        if self.lost or self.transport.get_write_buffer_size() == 0 or time.monotonic() > deadline:
            self.loop.call_soon(fn)  # next iteration: whatever the transport could send has been sent
        else:
            self.loop.call_later(0.01, self._after_flush, fn, deadline)

    def _close(self) -> None:
        """Close after the buffered bytes are sent; whatever is still queued will not be answered."""
        if not self.closing:
            self.closing = True
            self.queue.clear()
            self.transport.close()

    def _count_eof_error(self) -> None:
        err = self.parser.eof()
        if err is not None:
            self.rt.request_finished(err.status, started=False)  # nobody is there to read a reply

    # -- timers and shutdown (called by the server) --------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Working for the client: a request is waiting, queued, or held back by flow control."""
        return self.task is not None or bool(self.queue) or self.write_paused

    def check_timeouts(self, now: float, header_timeout: float, keepalive: float) -> None:
        if self.busy or self.closing:
            return
        waited = now - self.waiting_since
        if self.parser.idle:
            # An idle keep-alive connection gets --keepalive; one that never sent anything, --header-timeout.
            if waited > (keepalive if self.served else header_timeout):
                self._close()
        elif waited > header_timeout:
            # Mid-head (since its first byte) or mid-body (since the last byte): too slow.
            self.transport.write(refuse(TIMEOUT_408, self.rt))
            self._close()

    def close_if_idle(self) -> None:
        if not self.busy:
            self._close()

    def abort(self) -> None:
        self.closing = True
        self.transport.abort()


class LoopEngine:
    """The loop's top level: serve the listener, sweep timers, tick and measure lag, shut down on a signal."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, rt: Runtime, max_requests: int = 0) -> None:
        self.config = config
        self.loop = loop
        self.rt = rt
        self.max_requests = max_requests
        self.connections: set[HttpProtocol] = set()
        self.keepalive = config.keepalive > 0
        self.stopping = False
        self.force = False  # a second, impatient signal cuts the drain short
        self.stop_signal: asyncio.Future[str] = loop.create_future()
        self.listening: asyncio.AbstractServer | None = None
        self.tick = time.monotonic()  # written by the lag task, read by the watchdog thread
        self.lag_ms = 0.0
        self.lags: collections.deque[tuple[float, float]] = collections.deque()  # (when, lag_ms)
        rt.heartbeat(self.tick, 0.0)
        rt.engine_stats = self.stats

    async def run(self, sock: socket.socket) -> int:
        sock.setblocking(False)
        server = self.listening = await self.loop.create_server(lambda: HttpProtocol(self), sock=sock,
                                                                backlog=self.config.backlog)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.loop.add_signal_handler(sig, self._on_signal, sig.name)
        helpers = [self.loop.create_task(self._measure_lag()), self.loop.create_task(self._sweep())]
        if self.config.watchdog > 0:
            watchdog = Watchdog(self, self.config.watchdog)
            watchdog.start()
        else:
            watchdog = None
        try:
            signame = await self.stop_signal
            self.stopping = True
            server.close()  # stop accepting; the listening socket is closed now
            if signame in ("SIGTERM", "max-requests"):
                await self._drain(signame)
            else:
                self._force(signame)
        finally:
            if watchdog is not None:
                watchdog.stop()
            for task in helpers:
                task.cancel()
        return EXIT_RECYCLED if signame == "max-requests" else 0

    def _on_signal(self, signame: str) -> None:
        if not self.stop_signal.done():
            self.stop_signal.set_result(signame)
        elif signame != "SIGTERM":
            self.force = True

    def stop(self, why: str) -> None:
        """Begin the graceful shutdown for WHY ("max-requests"); stop accepting right now.

        Called before the last response is written, so a client that reconnects after reading it finds
        the listener closed instead of being accepted here and dropped by the drain.
        """
        self.stopping = True
        if self.listening is not None:
            self.listening.close()
        if not self.stop_signal.done():
            self.stop_signal.set_result(why)

    async def _drain(self, signame: str) -> None:
        """Close idle connections, let busy ones finish and close, abort what is left at the deadline."""
        t0 = time.monotonic()
        deadline = t0 + self.config.graceful_timeout
        log_shutdown_begin(signame, self.rt.in_flight, self.config.graceful_timeout)
        for conn in list(self.connections):
            conn.close_if_idle()
        # Each busy connection closes after its response (keep-alive is off while stopping): wait for none.
        while self.connections and time.monotonic() < deadline and not self.force:
            await asyncio.sleep(0.02)
        drained = not self.connections
        in_flight = self.rt.in_flight
        for conn in list(self.connections):
            conn.abort()
        log_shutdown_end(drained, in_flight, time.monotonic() - t0)

    def _force(self, signame: str) -> None:
        t0 = time.monotonic()
        in_flight = self.rt.in_flight
        log_shutdown_begin(signame, in_flight, 0.0)
        for conn in list(self.connections):
            conn.abort()
        log_shutdown_end(in_flight == 0, in_flight, time.monotonic() - t0)

    async def _measure_lag(self) -> None:
        """Sleep LAG_INTERVAL, record how late we woke: the loop measuring itself from the inside.

        Each tick is also the loop's heartbeat, pushed to the runtime (a master reads it from the board).
        """
        monotonic, rt, lags = time.monotonic, self.rt, self.lags
        while True:
            t0 = monotonic()
            await asyncio.sleep(LAG_INTERVAL)
            now = monotonic()
            lag_ms = max(0.0, (now - t0 - LAG_INTERVAL) * 1000)
            self.tick, self.lag_ms = now, lag_ms
            rt.heartbeat(now, lag_ms)
            lags.append((now, lag_ms))
            while lags[0][0] < now - LAG_WINDOW:
                lags.popleft()

    def stats(self) -> dict[str, Any]:
        """The figures only the loop knows (handed to the runtime as its engine_stats)."""
        now = time.monotonic()
        # If the loop has not ticked for a while, the lag is at least that long, measured or not yet.
        lag_now = loop_lag_ms(self.tick, self.lag_ms, now)
        recent = [lag for when, lag in self.lags if when >= now - LAG_WINDOW]
        return {"connections": len(self.connections), "loop_lag_ms": lag_now,
                "loop_lag_max_ms": round(max(recent + [lag_now]), 3)}

    async def _sweep(self) -> None:
        """Check every connection's header and keep-alive timers a few times a second."""
        header_timeout, keepalive = self.config.header_timeout, self.config.keepalive
        interval = max(0.05, min(0.5, header_timeout / 4, keepalive / 4 if keepalive > 0 else 0.5))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now, header_timeout, keepalive)


class Watchdog(threading.Thread):
    """Exit the process when the loop's tick is older than LIMIT seconds (a supervisor restarts it)."""

    def __init__(self, engine: LoopEngine, limit: float) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.engine, self.limit = engine, limit
        self._stopped = threading.Event()

    def run(self) -> None:
        period = min(0.25, self.limit / 4)
        while not self._stopped.wait(period):
            stalled = time.monotonic() - self.engine.tick
            if stalled > self.limit:
                # Logging from this thread is safe enough: the loop thread is blocked, we are about to exit.
                log.critical("watchdog: the event loop has not ticked for %.2fs (limit %gs); exiting with "
                             "status %d so a supervisor restarts the server", stalled, self.limit,
                             EXIT_WATCHDOG)
                os._exit(EXIT_WATCHDOG)

    def stop(self) -> None:
        self._stopped.set()


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(config: Config, sock: socket.socket, rt: Runtime, max_requests: int = 0) -> int:
    """Run the loop engine on SOCK until a stop signal (or --max-requests); return the exit status."""
    loop = new_loop(config.loop)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(LoopEngine(config, loop, rt, max_requests).run(sock))
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def serve(config: Config) -> int:
    """Run the eventloop model — the loop engine alone in one process — until a signal stops it."""
    sock = make_listener(config)
    log_startup(config, sock, detail=f"loop={config.loop}")
    return run(config, sock, Runtime(config))
