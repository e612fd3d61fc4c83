"""One client connection on the event loop: an `asyncio.Protocol` around the policy's `Connection`.

servers/eventloop.py owns the loop, the listener and the stop; this owns what happens on one connection — the
fast path (a route answered inside `data_received`), answers in order, flow control, the connection's deadline
bucket, and ending it as the policy says (close, linger, abort). The essay of servers/eventloop.py tells the
story; this is the part uvicorn keeps in its `httptools_impl.py`.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
from typing import Any, Protocol

from webmodels.app import dispatch_fast
from webmodels.codec import HttpError, Request, Response
from webmodels.connection import ABORT, CLOSE, INF, LINGER, Connection, Policy
from webmodels.listen import EXPECTED_NET_ERRORS
from webmodels.log import log
from webmodels.runtime import Runtime

from .deadlines import BUCKET_S, NEVER, Deadlines
from .lifecycle import monotonic

MAX_QUEUED = 16  # pipelined requests waiting on one connection before we stop reading it
UNSENT_POLL_S = 0.01  # how often we look at a write buffer that is draining below the high-water mark
_ABORT_LINGER = struct.pack("ii", 1, 0)


class LoopServer(Protocol):
    """What a connection needs from the engine that accepted it (servers/eventloop.LoopEngine)."""

    loop: asyncio.AbstractEventLoop
    policy: Policy
    rt: Runtime
    timers: Deadlines
    send_poll: float  # seconds between two looks at a write buffer that is not draining
    connections: set[Any]


class HttpProtocol(asyncio.Protocol):
    """One client connection: feed the policy, answer in order, respect flow control, end as told."""

    __slots__ = ("server", "c", "transport", "queue", "task", "write_paused", "read_paused", "ended", "lost",
                 "wake", "polling")

    def __init__(self, server: LoopServer) -> None:
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
                    # The common case, one request and nothing pipelined: _answer_queue → _respond → _write
                    # unrolled (this runs for every request; each call saved is measurable at 50k rps).
                    event = events[0]
                    if event.__class__ is Request:
                        server = self.server
                        result = dispatch_fast(event, server.rt)
                        if result.__class__ is Response:
                            now = monotonic()
                            out = c.respond(event, result, now)
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
        self._write(self.c.respond(req, resp, monotonic()))

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
            self._reset()
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

    # -- a forced stop (called by the engine) ------------------------------------------------------------------
    def abort(self) -> None:
        """Forced shutdown: reset the connection; nothing is counted against the client."""
        self.c.abort(monotonic())
        self.ended = True
        self._reset()

    def _reset(self) -> None:
        # transport.abort() alone only drops *our* buffer: the kernel still sends what it holds, then a FIN.
        # SO_LINGER (1, 0) makes the close a reset, which drops the kernel's copy too.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_LINGER)
            except OSError:
                pass
        self.transport.abort()
