"""The loop engine: one thread, one event loop (uvloop), every connection of its process multiplexed on it.

It runs alone as the `eventloop` model (one process, `serve()` below), and inside every worker of
`prefork --engine loop` / `hybrid-loop` (nginx, uvicorn `--workers N`): the same code, given a listening
socket and a runtime by whoever hosts it.

# What the one thread owns
Everything. One thread runs one loop (uvloop by default, `--loop asyncio` for the standard one), created
in `run()` and nowhere earlier — in a prefork worker that means after the fork, never in the master. The
loop owns the listening socket, every connection (an `asyncio.Protocol` holding its `connection.Connection`,
the sans-IO policy that every engine shares, with its parser inside), the deadlines, and the handler while
it runs. There is nothing to lock in the engine itself because nothing runs concurrently with anything
else: a request is handled between two returns to the loop. The only other thread is the optional watchdog
(the `eventloop` model only), which reads one timestamp and never touches a connection.

# How a request flows
The loop reads bytes and calls `HttpProtocol.data_received`, which feeds the policy (`conn.receive`).
Complete requests (several at once when the client pipelines) are answered strictly in order. The fast
path runs the handler right there: `dispatch_fast` calls the route, and if it returns without yielding an
effect (hello, bytes, cpu, stats...) the policy renders the response (`conn.respond` decides keep-alive)
and it is handed to `transport.write` before `data_received` returns — no task, no future, no queue, no
extra trip round the loop. A route that must wait (`/io` yields `Sleep`) comes back as a coroutine; the
connection wraps it in one task, stops answering until that task has written its response, then carries on
with what was pipelined behind it. So there is at most one task per connection, and only while a request
is waiting. After every write the transport's buffer size goes to `conn.sending()`: that is how the policy
knows the response left (the idle clock starts, an after-hook runs) or is stuck (the send clock runs).

Writes are flow-controlled. When the transport's buffer passes its high-water mark the loop calls
`pause_writing`: we stop answering and stop reading from that client. We also stop reading when more than
`MAX_QUEUED` pipelined requests are waiting. Reading resumes when both clear. A client that sends fast but
reads slowly thus costs us one buffer, not unbounded memory.

# What waiting costs the loop
An idle keep-alive connection is a protocol object, a policy `Connection` with its parser, and a uvloop
transport: measured, about 3.2 KiB of RSS each (benchmarks/c10k.py: 10,000 idle connections), and no
thread. Its deadlines (which one applies, what its expiry answers: `connection.py`) are kept in
`Deadlines`, buckets of `BUCKET_S` keyed by time with lazy invalidation: a connection sits in the bucket of
its earliest deadline; a deadline that moves later (every response pushes keep-alive on) touches nothing,
the old bucket fires and re-files the connection. A tick costs the buckets that came due, never a pass over
every connection: the periodic sweep this replaced walked all 10,000 idle connections twice a second, about
12% of the loop's busy time during a probe and single stalls of up to 26 ms (py-spy, c10k.py --py-spy);
with buckets the probe's p99 with 10,000 idle connections is that with none. A timer handle per connection
(`call_later`) would cost arming and cancelling one per request; a heap would cost O(log n) per re-arm.
The price of buckets: a deadline fires up to one bucket (50 ms) late.

What still grows with connections is the garbage collector's full pass: it walks every live object, a few
per connection, so with 10,000 connections one full collection takes 40–70 ms (measured with gc.callbacks
while c10k.py opened them). CPython runs it only after the long-lived objects grew by a quarter, so it
strikes while connections pile up, not while they idle. (`gc.freeze()` at boot did not shorten it here and
made each /metrics scrape 0.3 ms slower, so we do not.)

# How it fails
- **Slow client**: cheap. A connection trickling its head holds its parser and a few hundred bytes, not a
  thread; the head (and body) deadline of `--header-timeout`, extended by `--min-rate`, bounds it (408,
  then close). A client that does not read its response holds its transport buffer until `--send-timeout`
  after the last progress, then is aborted with a reset (SO_LINGER 0: the kernel drops its copy too). A
  refusal with input still arriving (413 during an upload) is a lingering close: write side shut, read and
  discard for up to `LINGER_S`, so the client reads its 413 instead of a reset — it costs the loop nothing
  but the reads.
- **Hung handler**: blocks *everyone*. `/fault/hang` and `/cpu?ms=5000` run inline on the one thread; until
  they return no other connection is read, no deadline fires, no signal is handled. That is the lesson of
  this model, not a bug: the loop is fast only as long as every handler yields quickly. `loop_lag_ms` in
  `/_lab/stats` shows it.
- **Crash**: shared fate. `/fault/crash` (or a segfault) ends the one process, and with it every
  connection and every in-flight request — all of them in the `eventloop` model, one worker's share
  under a master.
- **Leak**: shared too. Every request's garbage lives in the one heap; nothing is recycled.

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
SIGTERM (and, in a worker, the master's SIGTERM for a SIGHUP reload, or `--max-requests` reached): stop
accepting without losing what is queued, finish in-flight requests for up to `--graceful-timeout`, then
abort the rest. Closing a listening socket resets every connection still waiting in its accept queue —
requests their clients have already sent — so `_stop_listening` keeps a duplicate of the socket, closes
the loop's server, and accepts from the duplicate until the kernel says the queue is empty (non-blocking),
then closes it. Those connections are served like any other; the policy is draining, so every response now
says `Connection: close`. Idle keep-alive connections are closed at once; a connection that has not asked
anything yet keeps its `--header-timeout` to ask (it was established before we stopped: its request may be
on the way). The window that remains: a connection the kernel completes between our last accept and the
close of our copy is reset *if ours was the last copy of the listener* — the `eventloop` model, or a
`--reuseport` worker (its own queue; Linux does not hand it to a sibling). A worker on the shared listener
never closes it for everyone: the master and its siblings still hold it, they accept what we leave.
tests/test_claims.py checks zero loss under SIGTERM, SIGHUP and recycling with a loop kept busy, so the
queue is full when the signal comes. SIGINT/SIGQUIT: abort at once. Either way `run()` returns 0
(`EXIT_RECYCLED` after `--max-requests`). Signals are handled by the loop (`add_signal_handler`), so a loop
blocked by a hung handler notices them only when the handler returns — the watchdog (alone) or the
master's `--timeout` (in a worker) exists for that.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import struct
import threading
import time
from typing import Any

from webmodels.app import dispatch_fast
from webmodels.codec import HttpError, Request, Response
from webmodels.config import Config
from webmodels.connection import ABORT, CLOSE, INF, LINGER, Connection, Limits, Policy
from webmodels.exitcodes import EXIT_RECYCLED, EXIT_WATCHDOG
from webmodels.listen import (EXPECTED_NET_ERRORS, log_shutdown_begin, log_shutdown_end, log_startup,
                              make_listener)
from webmodels.log import log
from webmodels.runtime import LAG_INTERVAL, Runtime, loop_lag_ms

LAG_WINDOW = 10.0  # loop_lag_max_ms is the worst lag seen in this many seconds
MAX_QUEUED = 16  # pipelined requests waiting on one connection before we stop reading it
BUCKET_S = 0.05  # width of one deadline bucket: a deadline fires at most this much (plus one tick) late
UNSENT_POLL_S = 0.01  # how often we look at a write buffer that is draining below the high-water mark
NEVER = 1 << 62  # a wake key later than any deadline: "no bucket holds this connection"
_ABORT_LINGER = struct.pack("ii", 1, 0)
monotonic = time.monotonic


class Deadlines:
    """Deadline buckets with lazy invalidation: the loop's one timer for every connection.

    A connection sits in at most one *valid* bucket, the one for the earliest moment it must be looked at
    (`HttpProtocol.wake`). Deadlines that move later (every response pushes the keep-alive deadline on)
    touch nothing: the old bucket fires, the connection finds its deadline not due and files itself under
    the new one. Only a deadline that moves *earlier* (a head begins, bytes wait to be sent, a linger)
    adds an entry, and the entry it supersedes is skipped when its bucket comes (its key no longer matches).
    So a tick costs the buckets that came due — O(connections whose deadline passed), never O(connections):
    10,000 idle keep-alive connections cost nothing until their `--keepalive` runs out.
    """

    __slots__ = ("buckets", "done")

    def __init__(self, now: float) -> None:
        self.buckets: dict[int, list[HttpProtocol]] = {}
        self.done = int(now / BUCKET_S)  # every bucket up to this key has been processed

    def key(self, when: float) -> int:
        """The bucket for WHEN: the first one processed at or after WHEN (never early)."""
        key = int(when / BUCKET_S) + 1
        return key if key > self.done else self.done + 1

    def add(self, key: int, proto: HttpProtocol) -> None:
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = [proto]
        else:
            bucket.append(proto)

    def due(self, now: float) -> list[tuple[int, list[HttpProtocol]]]:
        """Pop every bucket whose time has come; return (key, protocols) pairs in order."""
        end = int(now / BUCKET_S)
        out = []
        buckets = self.buckets
        if buckets:
            for key in range(self.done + 1, end + 1):
                bucket = buckets.pop(key, None)
                if bucket is not None:
                    out.append((key, bucket))
        if end > self.done:
            self.done = end
        return out


class HttpProtocol(asyncio.Protocol):
    """One client connection: feed the policy, answer in order, respect flow control, end as told."""

    __slots__ = ("server", "c", "transport", "queue", "task", "write_paused", "read_paused", "ended", "lost",
                 "wake", "polling")

    def __init__(self, server: LoopEngine) -> None:
        self.server = server
        self.c: Connection = server.policy.connection(monotonic())  # the `new` clock starts at the accept
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.queue: collections.deque[Request | HttpError] | None = None  # made when something is pipelined
        self.task: asyncio.Task[None] | None = None  # the one request waiting on an effect, if any
        self.write_paused = False
        self.read_paused = False
        self.ended = False  # _end() ran: closed, aborted, or lingering (write side shut down)
        self.lost = False
        self.wake = NEVER  # the key of the one deadline bucket that validly holds us
        self.polling = False  # an UNSENT_POLL_S callback is pending

    # -- the transport's callbacks -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        server.connections.add(self)
        server.rt.connection_accepted()
        self._arm(monotonic())

    def data_received(self, data: bytes) -> None:
        c = self.c
        now = monotonic()
        if c.closing:  # lingering (or about to close): discard, and close once the policy says so
            c.receive(data, now)
            if c.closing == CLOSE and self.ended:
                self.transport.close()
            return
        events = c.receive(data, now)
        if events:
            queue = self.queue
            if not queue:
                if self.task is None and not self.write_paused and len(events) == 1:
                    # The common case, one request and nothing pipelined: _answer_one → _respond → _write
                    # unrolled (this runs for every request; each call saved is measurable at 50k rps).
                    event = events[0]
                    if event.__class__ is Request:
                        server = self.server
                        result = dispatch_fast(event, server.rt)
                        if result.__class__ is Response:
                            now = monotonic()
                            out = c.respond(event, result, now)
                            policy = server.policy
                            if policy.limits.max_requests and policy.exhausted and not server.stopping:
                                server.stop("max-requests")  # before the bytes go (see _respond)
                            transport = self.transport
                            transport.write(out)
                            unsent = transport.get_write_buffer_size()
                            c.sending(unsent, now)
                            if unsent and not self.polling and not self.write_paused:
                                self.polling = True
                                server.loop.call_later(UNSENT_POLL_S, self._poll_unsent)
                            if c.closing:
                                self._end()
                            else:
                                self._arm(now)
                            return
                        self.task = server.loop.create_task(self._finish(event, result))
                        return
                    self._answer_one(event)
                    if not c.closing:
                        self._arm(now)
                    return
                if queue is None:
                    queue = self.queue = collections.deque()
            queue.extend(events)
            if self.task is None:
                self._answer_queue()
            if len(queue) > MAX_QUEUED and not self.read_paused and not c.closing:
                self.read_paused = True
                self.transport.pause_reading()
        if not c.closing:
            self._arm(now)

    def eof_received(self) -> bool:
        c = self.c
        c.eof(monotonic())
        if c.closing and self.task is None and not self.queue:
            self.ended = True
            return False  # nothing left to answer: the transport closes itself after flushing
        return True  # half-closed: still answer what was asked, then _end() closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.ended = True
        self.server.connections.discard(self)
        # Counts a request abandoned mid-way (FIN or reset alike) once, and runs pending after-hooks.
        self.c.closed(monotonic())
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
        if not self.read_paused and not self.c.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        now = monotonic()
        c = self.c
        c.sending(self.transport.get_write_buffer_size(), now)  # progress: the send deadline moves
        if self.ended:
            self._arm(now)
            return
        if self.task is None:
            self._answer_queue()
        if not c.closing:
            self._arm(now)

    # -- answering ---------------------------------------------------------------------------------------------
    def _answer_one(self, event: Request | HttpError) -> None:
        c = self.c
        if isinstance(event, HttpError):
            self._write(c.refuse(event, monotonic()))
        else:
            result = dispatch_fast(event, self.server.rt)
            if isinstance(result, Response):
                self._respond(event, result)
            else:
                self.task = self.server.loop.create_task(self._finish(event, result))
                return
        if c.closing:
            self._end()

    def _answer_queue(self) -> None:
        """Answer queued requests in order until one must wait, writing is paused, or we close."""
        queue, c = self.queue, self.c
        if queue is None:
            return
        rt = self.server.rt
        while queue and not self.write_paused and not c.closing:
            event = queue.popleft()
            if isinstance(event, HttpError):
                self._write(c.refuse(event, monotonic()))
                break
            result = dispatch_fast(event, rt)
            if isinstance(result, Response):
                self._respond(event, result)
            else:
                self.task = self.server.loop.create_task(self._finish(event, result))
                return
        if c.closing:
            self._end()
        elif self.read_paused and not self.write_paused and len(queue) <= MAX_QUEUED // 2:
            self.read_paused = False
            self.transport.resume_reading()

    async def _finish(self, req: Request, pending: Any) -> None:
        """Await a request that waits on an effect, answer it, then go back to the queue."""
        try:
            resp = await pending
        finally:
            self.task = None
        if self.ended:  # the client is gone (or we aborted): the answer is dropped
            return
        self._respond(req, resp)
        c = self.c
        if c.closing:
            self._end()
            return
        self._answer_queue()
        if self.c.closing:
            return
        self._arm(monotonic())

    def _respond(self, req: Request, resp: Response) -> None:
        server = self.server
        out = self.c.respond(req, resp, monotonic())
        if server.policy.exhausted and not server.stopping:
            # Before the bytes go: a client that reconnects after reading them finds the listener closed.
            server.stop("max-requests")
        self._write(out)

    def _write(self, out: bytes) -> None:
        transport = self.transport
        transport.write(out)
        unsent = transport.get_write_buffer_size()
        self.c.sending(unsent, monotonic())
        if unsent and not self.polling and not self.write_paused:
            self.polling = True
            self.server.loop.call_later(UNSENT_POLL_S, self._poll_unsent)

    def _poll_unsent(self) -> None:
        """Report a write buffer draining below the high-water mark (no callback says when it empties)."""
        self.polling = False
        if self.lost or self.write_paused:
            return  # resume_writing reports from here on
        c = self.c
        if not c.unsent:
            return
        now = monotonic()
        unsent = self.transport.get_write_buffer_size()
        c.sending(unsent, now)  # 0 runs after-hooks, starts the idle (or linger) clock
        if unsent:
            self.polling = True
            self.server.loop.call_later(UNSENT_POLL_S, self._poll_unsent)
        self._arm(now)

    def _end(self) -> None:
        """End the connection as the policy says (c.closing): close, linger, or abort."""
        if self.ended:
            return
        self.ended = True
        if self.queue:
            self.queue.clear()
        how = self.c.closing
        transport = self.transport
        if how == ABORT:
            # transport.abort() alone only drops *our* buffer: the kernel still sends what it holds, then a
            # FIN. SO_LINGER (1, 0) makes the close a reset, which drops the kernel's copy too.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_LINGER)
                except OSError:
                    pass
            transport.abort()
        elif how == LINGER:
            transport.write_eof()  # FIN once the buffer is flushed; keep reading what the client sends
            if self.read_paused:
                self.read_paused = False
                transport.resume_reading()
            self._arm(monotonic())  # the linger deadline
        else:
            transport.close()  # after the buffered bytes are sent

    # -- deadlines ---------------------------------------------------------------------------------------------
    def _arm(self, now: float) -> None:
        """File us under the bucket of our next deadline, unless a bucket at or before it already holds us."""
        c = self.c
        when = c.deadline()[0]
        if c.unsent:  # look at the write buffer a few times per --send-timeout: progress moves the deadline
            poll = now + self.server.send_poll
            if poll < when:
                when = poll
        if when == INF:
            return
        timers = self.server.timers
        key = int(when / BUCKET_S) + 1  # timers.key(when), inlined: this runs for every request
        if key <= timers.done:
            key = timers.done + 1
        if key < self.wake:
            self.wake = key
            timers.add(key, self)

    def check(self, now: float) -> None:
        """Our bucket came due: report send progress, then apply an expired deadline or re-file us."""
        self.wake = NEVER
        if self.lost:
            return
        c = self.c
        if c.unsent:
            c.sending(self.transport.get_write_buffer_size(), now)
        act = c.expire(now)
        if act is None:
            self._arm(now)
            return
        if act.reply:
            self._write(act.reply)
        if self.ended:  # a linger that ran out
            self.transport.close()
        else:
            self._end()

    # -- shutdown (called by the server) ------------------------------------------------------------------------
    def close_if_idle(self) -> None:
        """Draining: close a keep-alive connection between requests (one that was never asked waits)."""
        c = self.c
        if c.idle and c.served and self.task is None and not self.queue and not self.ended:
            self.ended = True
            self.transport.close()  # connection_lost tells the policy (nothing was asked: nothing counted)

    def abort(self) -> None:
        """Forced shutdown: reset the connection; nothing is counted against the client."""
        self.c.abort(monotonic())
        self.ended = True
        self.transport.abort()


class LoopEngine:
    """The loop's top level: serve the listener, run the deadlines, tick and measure lag, shut down."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, rt: Runtime, max_requests: int = 0) -> None:
        self.config = config
        self.loop = loop
        self.rt = rt
        self.policy = Policy(Limits.from_config(config, max_requests=max_requests), rt)
        self.send_poll = max(BUCKET_S, config.send_timeout / 4)
        self.timers = Deadlines(monotonic())
        self.connections: set[HttpProtocol] = set()
        self.stopping = False
        self.force = False  # a second, impatient signal cuts the drain short
        self.stop_signal: asyncio.Future[str] = loop.create_future()
        self.listening: asyncio.AbstractServer | None = None
        self.sock: socket.socket | None = None
        self.backlog_drained = 0  # connections taken from the kernel's queue after we stopped listening
        self.tick = monotonic()  # written by the lag task, read by the watchdog thread
        self.lag_ms = 0.0
        self.lags: collections.deque[tuple[float, float]] = collections.deque()  # (when, lag_ms)
        rt.heartbeat(self.tick, 0.0)
        rt.engine_stats = self.stats

    async def run(self, sock: socket.socket) -> int:
        sock.setblocking(False)
        self.sock = sock
        server = self.listening = await self.loop.create_server(lambda: HttpProtocol(self), sock=sock,
                                                                backlog=self.config.backlog)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.loop.add_signal_handler(sig, self._on_signal, sig.name)
        helpers = [self.loop.create_task(self._measure_lag()), self.loop.create_task(self._run_deadlines())]
        if self.config.watchdog > 0:
            watchdog = Watchdog(self, self.config.watchdog)
            watchdog.start()
        else:
            watchdog = None
        try:
            signame = await self.stop_signal
            if signame in ("SIGTERM", "max-requests"):
                self._stop_listening()
                await self._drain(signame)
            else:
                self.stopping = True
                server.close()
                self._force(signame)
        finally:
            if watchdog is not None:
                watchdog.stop()
            for task in helpers:
                task.cancel()
        return EXIT_RECYCLED if signame == "max-requests" else 0

    def _on_signal(self, signame: str) -> None:
        if not self.stop_signal.done():
            if signame == "SIGTERM":
                self._stop_listening()  # at once, not one loop turn later: what is queued now, we serve
            self.stop_signal.set_result(signame)
        elif signame != "SIGTERM":
            self.force = True

    def stop(self, why: str) -> None:
        """Begin the graceful shutdown for WHY ("max-requests"); stop accepting right now.

        Called before the last response is written, so a client that reconnects after reading it finds
        the listener closed (or, in a prefork worker, a sibling's) instead of this process.
        """
        self._stop_listening()
        if not self.stop_signal.done():
            self.stop_signal.set_result(why)

    def _stop_listening(self) -> None:
        """Stop accepting without losing what the kernel already queued: close, then accept the backlog.

        Closing a listening socket resets every connection still waiting in its accept queue: requests
        their clients have already sent. So we keep a duplicate of the socket, let the loop's server close
        its own, and accept from the duplicate until the queue is empty (non-blocking), serving each
        connection like any other (keep-alive is off: each closes after its response). Then the duplicate
        is closed. A connection the kernel completes after that last accept is still reset if we held the
        last copy of the listener (see the essay for the window that remains).
        """
        if self.stopping:
            return
        self.stopping = True
        self.policy.drain()
        dup = None
        if self.sock is not None and self.sock.fileno() >= 0:
            try:
                dup = self.sock.dup()
            except OSError:
                dup = None
        if self.listening is not None:
            self.listening.close()
        if dup is None:
            return
        dup.setblocking(False)
        factory = lambda: HttpProtocol(self)  # noqa: E731
        try:
            while True:
                try:
                    conn, _ = dup.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    log.debug("draining the listen queue: %s", exc)
                    break
                conn.setblocking(False)
                self.backlog_drained += 1
                self.loop.create_task(self._adopt(factory, conn))
        finally:
            dup.close()

    async def _adopt(self, factory: Any, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(factory, sock=conn)
        except OSError as exc:
            log.debug("adopting a queued connection: %s", exc)
            conn.close()

    async def _drain(self, signame: str) -> None:
        """Close idle connections, let busy ones finish and close, abort what is left at the deadline."""
        t0 = monotonic()
        deadline = t0 + self.config.graceful_timeout
        log_shutdown_begin(signame, self.rt.in_flight, self.config.graceful_timeout)
        await asyncio.sleep(0)  # let the adopted backlog connections be made
        # Each busy connection closes after its response (the policy is draining); idle keep-alive ones
        # close now; a connection that has not asked anything yet is given its --header-timeout to ask.
        while self.connections and monotonic() < deadline and not self.force:
            for conn in list(self.connections):
                conn.close_if_idle()
            await asyncio.sleep(0.02)
        drained = not self.connections
        in_flight = self.rt.in_flight
        for conn in list(self.connections):
            conn.abort()
        if self.backlog_drained:
            log.info("shutdown: served %d connections taken from the listen queue after it closed",
                     self.backlog_drained)
        log_shutdown_end(drained, in_flight, monotonic() - t0)

    def _force(self, signame: str) -> None:
        t0 = monotonic()
        in_flight = self.rt.in_flight
        log_shutdown_begin(signame, in_flight, 0.0)
        for conn in list(self.connections):
            conn.abort()
        log_shutdown_end(in_flight == 0, in_flight, monotonic() - t0)

    async def _measure_lag(self) -> None:
        """Sleep LAG_INTERVAL, record how late we woke: the loop measuring itself from the inside.

        Each tick is also the loop's heartbeat, pushed to the runtime (a master reads it from the board).
        """
        rt, lags = self.rt, self.lags
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
        now = monotonic()
        # If the loop has not ticked for a while, the lag is at least that long, measured or not yet.
        lag_now = loop_lag_ms(self.tick, self.lag_ms, now)
        recent = [lag for when, lag in self.lags if when >= now - LAG_WINDOW]
        return {"connections": len(self.connections), "loop_lag_ms": lag_now,
                "loop_lag_max_ms": round(max(recent + [lag_now]), 3)}

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
