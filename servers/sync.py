"""The sync engine: one process, one thread, one connection at a time (gunicorn's sync worker).

# What it owns
Everything of its process, and exactly one client at a time: it waits for a connection on its listening
socket, then owns that connection — its socket, its policy state (webmodels.connection), the handler running
on its only thread — until the connection ends. It is the engine of `prefork` (the master forks N of them,
and they are the only thing that lets it serve N clients at once); it is never a model alone.

# How a request flows
wait (epoll on the listener with EPOLLEXCLUSIVE, plus the wake-up pipe) → `accept()` (non-blocking: a sibling
may have taken it) → servers/blocking.py: read under the policy's deadline, `dispatch_sync` on this thread
(simulated I/O blocks the process; CPU work runs truly in parallel with the sibling workers), send under the
send deadline, end as the policy says → by default close (`--keepalive 0`: a sync worker waiting on an idle
keep-alive connection serves nobody else; set `--keepalive S` to watch other clients starve).

The thundering herd: a shared listener is watched by every worker, each in its own epoll with EPOLLEXCLUSIVE,
so the kernel wakes one waiter (rarely a few) per connection, not all of them; one that wakes for nothing finds
EAGAIN and waits again. The kernel wakes the first idle waiter in the order they registered, so after each
connection a worker registers again, at the back of the line: idle workers take turns, as processes blocked in
accept() do (without it one worker would take every connection of a light load).

# How it fails
Whoever holds the connection holds the whole process, so every wait the policy allows is a worker lost to
everyone else for that long: a client trickling its head or body (`--header-timeout` in total, longer with
`--min-rate`, then a 408 without lingering), an idle keep-alive connection (`--keepalive`), a client that does
not read (`--send-timeout` after the last progress, then a reset), a refused upload (a lingering close of up
to `LINGER_S`). N slow clients take N workers — slowloris against prefork is a lesson to measure
(benchmarks/slowloris.py); a timeout only rotates the victims. A hung handler: nothing but the master's
`--timeout` (the runtime's `busy_since`, set while its one request runs) ends it. A crash costs the one
request it holds; a leak stays in this process until it is recycled (`--max-requests`).

# How it stops
servers/lifecycle.py: a stop signal sets flags and writes the wake-up pipe, so a waiting epoll/poll returns at
once. The connection being served ends by the policy's rule at a stop (a request it accepted is a request it
owes; an idle keep-alive connection closes at once); a stop that ends its wait serves what is queued at that
instant (the kernel may have woken it, and no sibling, for a connection); then, when the queue is ours to drain
(the master is stopping or closing our listener), every queued connection is accepted and served until the
queue stays empty for `DRAIN_QUIET_S`. A fast stop (SIGINT/SIGQUIT, a second SIGTERM) raises out of whatever the
thread waits in and resets the connection.
"""

from __future__ import annotations

import errno
import math
import os
import select
import socket

from webmodels.config import Config
from webmodels.runtime import Runtime

from . import blocking
from .lifecycle import DRAIN_QUIET_S, Lifecycle, monotonic

ACCEPT_AGAIN = (errno.EAGAIN, errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.EINTR)
WOKEN_FOR_MAX = 4  # connections taken at a stop for wake-ups that reached us (one per arrival in that instant)


class SyncEngine:
    runners = 1

    def __init__(self, config: Config, sock: socket.socket, rt: Runtime, life: Lifecycle) -> None:
        self.sock, self.rt, self.life, self.policy = sock, rt, life, life.policy
        self.wake_r, self.wake_w = os.pipe()  # signals write their number here (set_wakeup_fd), wake() a 0
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.reader = select.poll()  # waits for a connection's bytes, or a wake-up
        self.reader.register(self.wake_r, select.POLLIN)
        self.current: tuple[socket.socket, object] | None = None

    def wakeup_fd(self) -> int:
        return self.wake_w

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"\0")
        except OSError:
            pass  # full: it will wake anyway

    def serve(self) -> None:
        """Accept and serve one connection at a time until the lifecycle says stop."""
        self.sock.setblocking(False)  # (shared by every worker: they all accept non-blocking)
        waiter = select.epoll()
        listener, exclusive = self.sock.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE
        waiter.register(listener, exclusive)
        waiter.register(self.wake_r, select.EPOLLIN)
        polled = False  # the stop ended a wait (not a connection being served)
        try:
            while not self.life.reason:
                conn = self._accept()
                if polled := conn is None:
                    waiter.poll()
                    self._clear_wakeups()
                    continue
                self._serve(conn)
                # To the back of the line (see the essay): idle workers take turns.
                waiter.unregister(listener)
                waiter.register(listener, exclusive)
        finally:
            waiter.close()  # out of the listener's line: from here every new connection wakes a sibling
        # A stop that ended a wait may have come with a connection's wake-up: EPOLLEXCLUSIVE woke us instead of a
        # sibling, so nobody else looks until the next connection arrives (a worker removed by TTOU left one so
        # at the end of a stream: its client timed out). Serve what is queued at this instant; no quiet wait:
        # a retiring worker drains nothing away (the lifecycle's stop_accepting drains when the queue is ours).
        for _ in range(WOKEN_FOR_MAX if polled and not self.life.fast else 0):
            conn = self._accept()
            if conn is None:
                break
            self._serve(conn)

    def stop_accepting(self, drain_queue: bool) -> int:
        """Serve what the kernel queued (when ours to drain) until it stays empty DRAIN_QUIET_S; close our copy."""
        served = 0
        if drain_queue:
            quiet = select.poll()
            quiet.register(self.sock.fileno(), select.POLLIN)
            while not self.life.fast:
                conn = self._accept()
                if conn is None:
                    # Empty now. A client whose last response we just sent often reconnects within a
                    # millisecond: wait a moment for it.
                    if quiet.poll(DRAIN_QUIET_S * 1000):
                        continue
                    break
                self._serve(conn)
                served += 1
        self.sock.close()
        return served

    def finish(self, deadline: float) -> bool:
        return True  # one connection at a time: nothing is held once serve() has returned

    def abort_all(self) -> None:
        if self.current is not None:
            blocking.abort(*self.current)  # type: ignore[arg-type]
            self.current = None

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)

    # -- inside --------------------------------------------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        c = self.policy.connection(monotonic())
        self.current = (sock, c)
        blocking.serve(sock, c, self.rt, self._wait)
        self.current = None

    def _accept(self) -> socket.socket | None:
        try:
            conn, _ = self.sock.accept()
        except OSError as exc:
            if isinstance(exc, BlockingIOError) or exc.errno in ACCEPT_AGAIN:
                return None
            raise
        self.rt.connection_accepted()
        return conn

    def _clear_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _wait(self, sock: socket.socket, timeout: float | None) -> None:
        """Wait for SOCK's bytes, its deadline, or a wake-up (a stop moved the deadlines: look again)."""
        fd = sock.fileno()
        self.reader.register(fd, select.POLLIN)
        try:
            if self.reader.poll(None if timeout is None else math.ceil(timeout * 1000)):
                self._clear_wakeups()
        finally:
            self.reader.unregister(fd)
