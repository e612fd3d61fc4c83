"""The sync engine: one process, one thread, one connection at a time (gunicorn's sync worker).

# What it owns
Everything of its process, and exactly one client at a time: it waits for a connection on its listening
socket, then owns that connection — its socket, its policy state (webmodels.connection), the handler
running on its only thread — until the connection ends. It is the engine of `prefork` (the master forks N
of them, and they are the only thing that lets it serve N clients at once); it is never a model alone.

# How a request flows
wait (epoll on the listener with EPOLLEXCLUSIVE, plus the signal pipe) → `accept()` (non-blocking: a
sibling may have taken it) → read under the policy's deadline (`--header-timeout` for the head, the same
for the body; `--min-rate` extends both) → `dispatch_sync` on this thread (simulated I/O blocks the
process; CPU work runs truly in parallel with the sibling workers) → `send()` under the send deadline →
by default close (`--keepalive 0`: a sync worker waiting on an idle keep-alive connection serves nobody
else; set `--keepalive S` to watch other clients starve).

The thundering herd: the listener is shared by every worker. Each waits in its own epoll with
EPOLLEXCLUSIVE, so the kernel wakes one waiter (rarely a few) per connection, not all of them; one that
wakes for nothing finds EAGAIN and waits again. The kernel wakes the first idle waiter in the order they
registered, so after each connection a worker registers again, at the back of the line: idle workers take
turns, as processes blocked in accept() do (without it, one worker would take every connection of a light
load — and a counter per process would show one process).

# What waiting costs it
Everything: whoever holds the connection holds the whole process. The policy bounds each hold, and the
engine's essay is the price list:
- a client trickling its head or body: `--header-timeout` in total (not per byte), or less with
  `--min-rate`, then a 408 — and no lingering after a 408 (a slowloris would get `LINGER_S` more);
- an idle keep-alive connection: `--keepalive`;
- a client that does not read its response: `--send-timeout` after the last progress, then a reset (a
  slow reader that keeps reading is served to the end; one that stopped is cut);
- a refused upload (413 while the client still sends): a lingering close — the worker keeps reading and
  discarding for up to `LINGER_S` (2 s) or `LINGER_BYTES`, so the 413 is not destroyed by a reset;
- a hung handler: nothing but the master's `--timeout` (its board slot's `busy_since`, set while the one
  request it runs is in flight) ends that.
So N slow clients take N sync workers for as long as the policy lets them: slowloris against prefork is a
lesson to measure (benchmarks/slowloris.py). A timeout only *rotates* the victims: 100 connections
trickling 1 B/s and reconnecting when cut, against 4 workers, left a normal client 0 answers in 5 tries
(2 s each) with the defaults and still 0 with `--header-timeout 2` — the attackers queue ahead of it in
the backlog and each worker cuts one every 2 s. `--min-rate` is a tolerance, not a cut (it extends a
deadline for a client that sends fast enough, so a short `--header-timeout` does not cut an honest slow
upload). The defence is not to pin a process per connection: a loop engine (`hybrid-loop` answered 100 of
100, p99 4 ms, in the same attack) or a buffering proxy in front.

# Shutdown
SIGTERM is never an exception here: the handler only sets flags (`alive`, `policy.drain()`: every later
response says `Connection: close`) and the wake-up pipe makes a waiting epoll/poll return. The worker
finishes the connection it holds — whatever phase it is in: a request it has accepted is a request it
owes — and closes an idle keep-alive connection at once. Then, if the master is stopping the server, it
drains the listen queue: accepts non-blocking until it has stayed empty for 20 ms and serves each
connection. (The queue lives while any copy of the listener is open — this worker's, a sibling's, the
master's — so it is reset only when the last of them closes; the worker closes its copy after draining.) On a
retire (SIGHUP, SIGTTOU) or a recycle (`--max-requests`) it drains nothing: the queue is shared, the
siblings and the replacements keep accepting from it. With `--reuseport` the listener is this worker's
own, so it always drains it before closing it. SIGINT/SIGQUIT: leave at once. `--max-requests`: once the
policy is exhausted it returns EXIT_RECYCLED and the master forks a fresh one.
"""

from __future__ import annotations

import errno
import math
import os
import select
import signal
import socket
import struct
import time

from webmodels.app import dispatch_sync
from webmodels.codec import HttpError
from webmodels.config import Config
from webmodels.connection import ABORT, Connection, Limits, Policy
from webmodels.exitcodes import EXIT_RECYCLED
from webmodels.listen import EXPECTED_NET_ERRORS
from webmodels.log import log
from webmodels.runtime import Runtime

monotonic = time.monotonic
DRAIN_QUIET_S = 0.02  # a drain ends once the listener has been empty this long
ACCEPT_AGAIN = (errno.EAGAIN, errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.EINTR)


class SyncEngine:
    def __init__(self, config: Config, sock: socket.socket, rt: Runtime, max_requests: int = 0) -> None:
        self.config, self.sock, self.rt = config, sock, rt
        self.policy = Policy(Limits.from_config(config, max_requests=max_requests), rt)
        self.alive = True
        rt.runners = 1
        self.wake_r, self.wake_w = os.pipe()  # signals write their number here (set_wakeup_fd)
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.reader = select.poll()  # waits for a connection's bytes, or a signal
        self.reader.register(self.wake_r, select.POLLIN)

    def _on_term(self, signum: int, frame: object) -> None:
        # Flags only: the byte set_wakeup_fd writes wakes whatever wait we are in.
        self.alive = False
        self.policy.drain()

    def run(self) -> int:
        """Serve until told to stop; return the exit status (0, or EXIT_RECYCLED)."""
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, lambda *_: os._exit(0))
        signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.sock.setblocking(False)  # (shared by every worker: they all accept non-blocking)
        waiter = select.epoll()
        listener, exclusive = self.sock.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE
        waiter.register(listener, exclusive)
        waiter.register(self.wake_r, select.EPOLLIN)
        while self.alive:
            conn = self._accept()
            if conn is None:
                waiter.poll()
                self._clear_wakeups()
                continue
            self.serve(conn)
            if self.policy.exhausted:
                break
            # To the back of the line: the kernel wakes the first idle waiter in the order they registered,
            # so without this one worker would take every connection of a light load (a blocked accept()
            # queues its waiters in order of arrival; this gives the same turn-taking).
            waiter.unregister(listener)
            waiter.register(listener, exclusive)
        waiter.close()
        recycled = self.alive  # we left the loop without being told to: --max-requests
        if self.config.reuseport or (not recycled and self._master_stopping()):
            self._drain_queue()
        return EXIT_RECYCLED if recycled else 0

    def _master_stopping(self) -> bool:
        stopping = getattr(self.rt, "server_stopping", None)
        return True if stopping is None else bool(stopping())

    def _drain_queue(self) -> None:
        """Serve every connection queued at the listener: accept until it stays empty for DRAIN_QUIET_S."""
        self.policy.drain()
        served = 0
        quiet = select.poll()
        quiet.register(self.sock.fileno(), select.POLLIN)
        while True:
            conn = self._accept()
            if conn is None:
                # Empty now. A client whose last response we just sent often reconnects within a millisecond,
                # and with --reuseport the kernel may hash it to this listener again: wait a moment for it.
                if quiet.poll(DRAIN_QUIET_S * 1000):
                    continue
                break
            self.serve(conn)
            served += 1
        if served:
            log.info("drained %d queued connection(s) from the listener", served)

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

    def _wait_readable(self, sock: socket.socket, timeout: float | None) -> None:
        fd = sock.fileno()
        self.reader.register(fd, select.POLLIN)
        try:
            if self.reader.poll(None if timeout is None else math.ceil(timeout * 1000)):
                self._clear_wakeups()
        finally:
            self.reader.unregister(fd)

    def serve(self, sock: socket.socket) -> None:
        """Serve one connection until the policy says how to end it; end it that way."""
        c = self.policy.connection(monotonic())
        rt = self.rt
        try:
            while not c.closing:
                now = monotonic()
                if not self.alive and c.served and c.idle:
                    break  # draining: an idle keep-alive connection is closed at once
                timeout = c.timeout(now)
                if timeout == 0.0:
                    act = c.expire(now)
                    if act is not None and act.reply and not self.send(sock, c, act.reply):
                        break
                    continue
                if sock.gettimeout() is not None:
                    sock.settimeout(None)  # send() left a timeout: Python would poll with it before recv
                try:
                    data = sock.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    self._wait_readable(sock, timeout)
                    continue
                now = monotonic()
                if not data:
                    c.eof(now)
                    break
                for event in c.receive(data, now):
                    if isinstance(event, HttpError):
                        out = c.refuse(event, now)
                    else:
                        resp = dispatch_sync(event, rt)  # the board's busy_since is set while it runs
                        out = c.respond(event, resp, monotonic())
                    if not self.send(sock, c, out) or c.closing:
                        break
            self.finish(sock, c)
        except OSError as exc:
            if isinstance(exc, socket.timeout) or exc.errno in EXPECTED_NET_ERRORS:
                log.debug("client went away: %s", exc)
            else:
                log.exception("connection failed")
        finally:
            sock.close()
            c.closed(monotonic())

    @staticmethod
    def send(sock: socket.socket, c: Connection, data: bytes) -> bool:
        """Write DATA under the send deadline (from the last progress); False if the policy aborted."""
        view = memoryview(data)
        while view:
            now = monotonic()
            timeout = c.timeout(now)
            if timeout == 0.0:
                act = c.expire(now)  # the send deadline (abort), or an `after` hook that waited enough
                if act is not None and act.then == ABORT:
                    return False
                continue
            sock.settimeout(timeout)
            try:
                n = sock.send(view)
            except socket.timeout:
                continue  # the next turn expires it
            view = view[n:]
            c.sending(len(view), monotonic())
        return True

    @staticmethod
    def finish(sock: socket.socket, c: Connection) -> None:
        """End the connection as `c.closing` says: abort (reset), linger (read and discard), or close."""
        if c.closing == ABORT:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # (the caller closes)
        sock.shutdown(socket.SHUT_WR)  # our FIN right after the last byte
        while c.lingering:
            now = monotonic()
            timeout = c.timeout(now)
            if timeout == 0.0:
                c.expire(now)
                break
            sock.settimeout(timeout)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                c.eof(monotonic())
                break
            c.receive(data, monotonic())  # discarded, counted against the linger budget


def run(config: Config, sock: socket.socket, rt: Runtime, max_requests: int = 0) -> int:
    """Run the sync engine on SOCK until a stop signal (or --max-requests); return the exit status."""
    return SyncEngine(config, sock, rt, max_requests).run()
