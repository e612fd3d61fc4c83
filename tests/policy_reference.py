"""A reference engine for the connection policy: blocking sockets, one thread per connection, in-process.

Not a model (a thread per connection is exactly what the lab's thread pool exists to avoid). It exists so
the policy conformance table can show that `webmodels.connection` alone produces every expected outcome,
and as a worked example for the engines: `serve_connection` is the sync engine's serve loop with the
policy wired in; the thread engine's pool threads do the same between hand-offs.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import httpx

from webmodels.app import dispatch_sync
from webmodels.codec import HttpError
from webmodels.config import OPTIONS, build_config
from webmodels.connection import ABORT, Connection, Limits, Policy
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
        threading.Thread(target=self._accept, daemon=True).start()

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
