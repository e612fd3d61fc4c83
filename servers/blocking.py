"""A connection on a thread that may block: read, answer, send and close under the policy, written once.

The sync, threads and green-threads engines all serve a connection the same way — a thread (or greenlet) reads
until the policy yields a request, runs the handler on its own stack (`dispatch_sync`: an effect such as `Sleep`
blocks it), writes the answer under the send deadline, then ends the connection as the policy says. Only how
they *wait* for a socket differs, so that is a parameter (`wait(sock, timeout)`: return when it may be
readable, the timeout passed or something else needs a look — a stop, say). Under gevent the same calls are
patched and wait in the hub.

Sockets are non-blocking here (every call passes MSG_DONTWAIT or waits with poll first): a short send never
parks a thread past its deadline, and `settimeout` (one syscall per call) stays off the per-request path.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Callable

from webmodels.app import dispatch_sync
from webmodels.codec import HttpError
from webmodels.connection import ABORT, Connection
from webmodels.listen import EXPECTED_NET_ERRORS
from webmodels.log import log
from webmodels.runtime import Runtime

RECV_SIZE = 64 * 1024
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER (1, 0): close() sends a reset and drops what the kernel holds
monotonic = time.monotonic
Wait = Callable[[socket.socket, "float | None"], object]


def readable(sock: socket.socket, timeout: float | None) -> bool:
    """Wait until SOCK is readable or TIMEOUT seconds pass (None: forever)."""
    poller = select.poll()  # not select(): it cannot watch descriptors above 1023
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def writable(sock: socket.socket, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def serve(sock: socket.socket, c: Connection, rt: Runtime, wait: Wait = readable) -> None:
    """Serve one connection on the calling thread until the policy ends it; end it as the policy says."""
    try:
        while not c.closing:
            try:
                data = sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                now = monotonic()
                timeout = c.timeout(now)
                if timeout is None or timeout > 0:
                    wait(sock, timeout)
                    continue
                act = c.expire(now)  # a deadline passed: the policy says what to answer, if anything
                if act is not None and act.reply:
                    send(sock, c, act.reply)
                continue
            now = monotonic()
            if not data:
                c.eof(now)
                break
            for event in c.receive(data, now):
                if isinstance(event, HttpError):
                    out = c.refuse(event, now)
                else:
                    out = c.respond(event, dispatch_sync(event, rt), monotonic())
                if not send(sock, c, out) or c.closing:
                    break
        finish(sock, c)
    except OSError as exc:
        lost(exc)
        sock.close()
        c.closed(monotonic())  # counts a request the peer abandoned mid-way (FIN or reset) once


def send(sock: socket.socket, c: Connection, data: bytes) -> bool:
    """Write DATA under the policy's send deadline (from the last progress); False if the policy aborted."""
    try:
        n = sock.send(data, socket.MSG_DONTWAIT)  # the usual case: it all fits in one go
    except BlockingIOError:
        n = 0
    now = monotonic()
    c.sending(len(data) - n, now)
    if n == len(data):
        return True
    view = memoryview(data)[n:]
    while view:
        timeout = c.timeout(now)
        if timeout == 0.0:
            act = c.expire(now)  # the send deadline (abort), or an `after` hook that waited long enough
            if act is not None and act.then == ABORT:
                return False
        elif writable(sock, timeout):
            try:
                n = sock.send(view, socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
            view = view[n:]
            now = monotonic()
            c.sending(len(view), now)
            continue
        now = monotonic()
    return True


def finish(sock: socket.socket, c: Connection, wait: Wait = readable) -> None:
    """End the connection as `c.closing` says — abort (reset), linger (read and discard), or close — and close it."""
    try:
        if c.closing == ABORT:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        else:
            sock.shutdown(socket.SHUT_WR)  # our FIN right after the last byte
            linger(sock, c, wait)
    except OSError as exc:
        lost(exc)
    sock.close()
    c.closed(monotonic())


def linger(sock: socket.socket, c: Connection, wait: Wait = readable) -> None:
    """Read and discard what the client still sends until the policy's linger ends (at most LINGER_S)."""
    while c.lingering:
        now = monotonic()
        timeout = c.timeout(now)
        if timeout == 0.0:
            c.expire(now)
            break
        try:
            data = sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            wait(sock, timeout)
            continue
        if data:
            c.receive(data, monotonic())  # discarded, counted against the linger budget
        else:
            c.eof(monotonic())


def reject(sock: socket.socket, c: Connection) -> None:
    """Turn a new connection away at admission: the policy's 503, then close (best effort: we are saturated)."""
    try:
        # Read what the client sent first: closing over unread bytes makes the kernel send a reset, which can
        # destroy the 503 before the client reads it.
        try:
            gone = sock.recv(RECV_SIZE, socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            gone = False
        if gone:
            c.eof(monotonic())  # it had left anyway: nothing to answer, nothing counted
        else:
            sock.send(c.reject(monotonic()), socket.MSG_DONTWAIT)
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()
    c.closed(monotonic())


def abort(sock: socket.socket, c: Connection) -> None:
    """The server gives up on this connection (a forced stop): reset it; nothing is counted against the client."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    except OSError:
        pass
    sock.close()
    c.abort(monotonic())


def lost(exc: OSError) -> None:
    """Log a socket error: the client went away (debug), or something else (a traceback)."""
    if isinstance(exc, (socket.timeout, BlockingIOError)) or exc.errno in EXPECTED_NET_ERRORS:
        log.debug("client went away: %s", exc)
    else:
        log.exception("connection failed")
