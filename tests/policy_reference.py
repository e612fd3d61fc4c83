"""Reference engines for the connection policy, in-process: blocking sockets, and an event loop.

Not models (a thread per connection is exactly what the lab's thread pool exists to avoid). They exist so
the policy conformance table can show that `webmodels.connection` alone produces every expected outcome
under both ways of waiting, and as worked examples for the engines: `serve_connection` is the sync
engine's serve loop with the policy wired in (the thread engine's pool threads do the same between
hand-offs); `LoopProtocol` is the loop engine's protocol, with `check` as its sweep.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import threading
import time
from typing import Any

import httpx

from webmodels.app import dispatch_fast, dispatch_sync
from webmodels.codec import HttpError, Response
from webmodels.config import OPTIONS, build_config
from webmodels.connection import ABORT, CLOSE, LINGER, Connection, Limits, Policy
from webmodels.runtime import Runtime

monotonic = time.monotonic


def send(sock: socket.socket, conn: Connection, data: bytes) -> bool:
    """Write DATA under the policy's send deadline; False if the policy aborted the connection."""
    view = memoryview(data)
    while view:
        now = monotonic()
        timeout = conn.timeout(now)
        if timeout == 0.0:
            act = conn.expire(now)  # the send deadline (abort), or an `after` hook that waited enough
            if act is not None and act.then == ABORT:
                return False
            continue
        sock.settimeout(timeout)
        try:
            n = sock.send(view)
        except socket.timeout:
            continue  # the next turn expires it
        view = view[n:]
        conn.sending(len(view), monotonic())
    return True


def serve_connection(sock: socket.socket, policy: Policy) -> None:
    """Serve one connection until the policy says how to end it; then end it that way."""
    conn = policy.connection(monotonic())
    rt = policy.counts
    try:
        while not conn.closing:
            now = monotonic()
            timeout = conn.timeout(now)
            if timeout == 0.0:
                act = conn.expire(now)
                if act is not None and act.reply and not send(sock, conn, act.reply):
                    break
                continue
            sock.settimeout(timeout)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue  # the next turn expires it
            now = monotonic()
            if not data:
                conn.eof(now)
                break
            for event in conn.receive(data, now):
                if isinstance(event, HttpError):
                    out = conn.refuse(event, now)
                else:
                    resp = dispatch_sync(event, rt)  # type: ignore[arg-type]
                    out = conn.respond(event, resp, monotonic())
                if not send(sock, conn, out) or conn.closing:
                    break
        finish(sock, conn)
    except OSError:  # the peer reset or vanished
        sock.close()
    finally:
        conn.closed(monotonic())


def finish(sock: socket.socket, conn: Connection) -> None:
    """End the connection as `conn.closing` says: abort, linger, or close."""
    if conn.closing == ABORT:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        return
    sock.shutdown(socket.SHUT_WR)  # our FIN right after the last byte
    while conn.lingering:
        now = monotonic()
        timeout = conn.timeout(now)
        if timeout == 0.0:
            conn.expire(now)
            break
        sock.settimeout(timeout)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            conn.eof(monotonic())
            break
        conn.receive(data, monotonic())  # discarded, counted against the linger budget
    sock.close()


class ReferenceServer:
    """Enough of tests.support.Server's surface for the conformance table."""

    model = "reference"

    def __init__(self, *flags: str) -> None:
        names = {o.flag: o.name for o in OPTIONS}
        values: dict[str, Any] = {}
        it = iter(flags)
        for flag in it:
            if flag in ("--workers", "--threads"):  # a thread per connection: nothing to size
                next(it)
                continue
            values[names[flag]] = next(it)
        config = build_config("eventloop", {**values, "faults": True}, {})
        rt = Runtime(config)
        rt.model = "reference"
        self.policy = Policy(Limits.from_config(config), rt)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self.listener.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._stop = False
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)

    def _serve(self) -> None:
        self._ready.set()
        self._accept()

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_connection, args=(sock, self.policy), daemon=True).start()

    def stats(self) -> dict:
        return httpx.get(self.url + "/_lab/stats", timeout=10).json()

    def alive(self) -> bool:
        return not self._stop

    def stop(self) -> None:
        self._stop = True
        self.listener.close()


# -- the same policy under an event loop: callbacks and a sweep instead of blocking calls ----------------------
class LoopProtocol(asyncio.Protocol):
    """One connection on the loop: the loop engine's wiring of the policy, reduced to the essentials."""

    def __init__(self, server: LoopReferenceServer) -> None:
        self.server = server
        self.c = server.policy.connection(monotonic())
        self.queue: collections.deque[Any] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.conns.add(self)

    def data_received(self, data: bytes) -> None:
        c = self.c
        if c.closing:  # lingering: discard, and close once the policy says the linger is over
            c.receive(data, monotonic())
            if c.closing == CLOSE:
                self.transport.close()
            return
        self.queue.extend(c.receive(data, monotonic()))
        if self.task is None:
            self._answer()

    def _answer(self) -> None:
        c, rt = self.c, self.server.policy.counts
        while self.queue and not c.closing:
            event = self.queue.popleft()
            if isinstance(event, HttpError):
                self._write(c.refuse(event, monotonic()))
                continue
            result = dispatch_fast(event, rt)  # type: ignore[arg-type]
            if isinstance(result, Response):
                self._write(c.respond(event, result, monotonic()))
            else:
                self.task = asyncio.get_running_loop().create_task(self._finish(event, result))
                return
        if c.closing:
            self._end()

    async def _finish(self, req: Any, pending: Any) -> None:
        resp = await pending
        self.task = None
        if not self.transport.is_closing():  # else the client is gone: the answer is dropped
            self._write(self.c.respond(req, resp, monotonic()))
            self._answer()

    def _write(self, out: bytes) -> None:
        self.transport.write(out)
        self.c.sending(self.transport.get_write_buffer_size(), monotonic())

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.queue.clear()
        how = self.c.closing
        if how == ABORT:
            # transport.abort() alone only drops *our* buffer: the kernel still sends what it holds, then a
            # FIN. SO_LINGER (1, 0) makes the close a reset, which drops the kernel's copy too.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        elif how == LINGER:
            self.transport.write_eof()  # FIN once the buffer is flushed; keep reading what the client sends
        else:
            self.transport.close()

    def eof_received(self) -> bool:
        self.c.eof(monotonic())
        if self.c.closing and self.task is None and not self.queue:
            return False  # the transport closes itself after flushing
        return True  # half-closed: still answer what was asked

    def connection_lost(self, exc: Exception | None) -> None:
        self.c.closed(monotonic())
        self.server.conns.discard(self)

    def check(self, now: float) -> None:
        """The sweep: report send progress, then apply an expired deadline."""
        c = self.c
        if c.unsent:
            c.sending(self.transport.get_write_buffer_size(), now)
        act = c.expire(now)
        if act is None:
            return
        if act.reply:
            self._write(act.reply)
        if self.ended:  # a linger that ran out
            self.transport.close()
        else:
            self._end()


class LoopReferenceServer(ReferenceServer):
    """The reference under uvloop in a thread of the test process."""

    model = "reference-loop"

    def _serve(self) -> None:
        import uvloop
        loop = self.loop = uvloop.new_event_loop()
        self.conns: set[LoopProtocol] = set()

        async def sweep() -> None:
            while True:
                await asyncio.sleep(0.05)
                now = monotonic()
                for proto in list(self.conns):
                    proto.check(now)

        async def main() -> None:
            await loop.create_server(lambda: LoopProtocol(self), sock=self.listener)
            self._ready.set()
            await sweep()

        try:
            loop.run_until_complete(main())
        except RuntimeError:
            pass  # stopped

    def stop(self) -> None:
        self._stop = True
        self.loop.call_soon_threadsafe(self.loop.stop)
