"""The threads engine's acceptor thread: the listener, and every connection that waits for something.

servers/threadpool.py owns the pool and the lifecycle's side; this owns the one thread that never runs a
handler. It accepts, parks what is silent in a selector (epoll) — new connections that have not said anything
yet, idle keep-alive ones between requests, lingering closes — and hands a connection to the pool (through the
engine's `admit` for a first request, `turn` for a next one) once it is readable. A parked connection costs a
selector slot and a few KiB, never a thread.

Timers: one ordered dict per kind of wait (`new`, `idle`, `linger`); each deadline is a constant offset from when
the connection was put there (and the policy's stop rule keeps that order), so every wake-up looks only at the
heads — O(expired), not O(connections).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
import time
from collections import deque
from typing import Any, Callable

from webmodels.connection import Connection, Policy
from webmodels.log import log
from webmodels.runtime import Runtime

from .blocking import RECV_SIZE
from .lifecycle import monotonic

_LISTENER, _WAKE = object(), object()  # selector tags; every other tag is a Conn


class Conn:
    """One client connection and its policy state; owned by exactly one thread at a time."""

    __slots__ = ("sock", "c", "events")

    def __init__(self, sock: socket.socket, c: Connection) -> None:
        self.sock, self.c = sock, c
        self.events: deque[Any] = deque()  # parsed but not yet answered (pipelining)


def close(conn: Conn) -> None:
    """Close CONN's socket and tell its policy (counts a request the peer abandoned mid-way, once)."""
    conn.sock.close()
    conn.c.closed(monotonic())


class Acceptor:
    """The acceptor thread and what it owns; `give_back` and `stop_listening` are how other threads reach it."""

    def __init__(self, listener: socket.socket, rt: Runtime, policy: Policy, admit: Callable[[Conn], None],
                 turn: Callable[[Conn], None], left: Callable[[], None]) -> None:
        self.listener, self.rt, self.policy = listener, rt, policy
        self._admit, self._turn, self._left = admit, turn, left
        self._lock = threading.Lock()  # guards _returned, _wake_pending, _gone
        self._returned: list[Conn] = []  # handed back by pool threads (idle or lingering), not yet parked
        self._wake_pending = False
        self._gone = False
        self._wake_r, self._wake_w = socket.socketpair()
        # Ours only: parked connections, one dict per kind of wait, each in deadline order.
        self.fresh: dict[Conn, None] = {}
        self.idle: dict[Conn, None] = {}
        self.lingering: dict[Conn, None] = {}
        self._drain_queue: bool | None = None  # set by stop_listening: the cue
        self._listener_closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._accept_warned = 0.0

    # -- other threads ------------------------------------------------------------------------------------------
    def start(self) -> None:
        for sock in (self._wake_r, self._wake_w, self.listener):
            sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="acceptor", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop_listening(self, drain_queue: bool) -> None:
        """Take what the kernel queued first when DRAIN_QUEUE, then close the listener (waits up to 1 s)."""
        self._drain_queue = drain_queue
        self._wake()
        self._listener_closed.wait(1.0)

    def give_back(self, conn: Conn) -> bool:
        """Park CONN (idle or lingering) in the selector; False once we have left (a stop): the caller ends it."""
        with self._lock:
            if self._gone:
                return False
            self._returned.append(conn)
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._wake()
        return True

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # buffer full: it is awake already

    # -- the acceptor thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, _LISTENER)
        sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        try:
            self._select_loop(sel)
            self._left()  # the main thread may be waiting for us to leave
        except Exception:
            # Without its acceptor the server would look alive and serve no one: stop it instead.
            log.exception("the acceptor thread failed; stopping the server")
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            sel.close()

    def _select_loop(self, sel: selectors.BaseSelector) -> None:
        stopped = False
        while True:
            for key, _ in sel.select(self._next_expiry()):
                tag = key.data
                if tag is _LISTENER:
                    if not stopped:  # (closed earlier in this batch otherwise)
                        self._accept(sel)
                elif tag is _WAKE:
                    self._adopt(sel)
                    if self._drain_queue is not None and not stopped:
                        stopped = True
                        self._stop_listening(sel)
                elif tag in self.lingering:
                    self._discard(sel, tag)
                elif tag in self.idle:
                    del self.idle[tag]
                    sel.unregister(tag.sock)
                    self._turn(tag)
                elif tag in self.fresh:
                    del self.fresh[tag]
                    sel.unregister(tag.sock)
                    self._admit(tag)
            self._expire(sel, monotonic())
            if stopped:
                with self._lock:
                    if not (self.fresh or self.idle or self.lingering or self._returned):
                        self._gone = True  # from now on the pool ends what it lets go of itself
                        return

    def _accept(self, sel: selectors.BaseSelector) -> None:
        """Accept until the kernel's queue is empty."""
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # Out of file descriptors, typically: leave the rest in the backlog and retry shortly.
                if monotonic() - self._accept_warned > 1.0:
                    self._accept_warned = monotonic()
                    log.warning("accept failed: %s", exc)
                time.sleep(0.01)
                return
            self.rt.connection_accepted()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock, self.policy.connection(monotonic()))
            try:
                ready = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                self._park(sel, conn, self.fresh)  # connected but silent: wait here, not in a thread
                continue
            except OSError:
                ready = b""
            if ready:
                self._admit(conn)  # the request is already there: skip a round through the selector
            else:
                close(conn)  # it left before saying anything

    def _adopt(self, sel: selectors.BaseSelector) -> None:
        """Park connections the pool handed back: idle keep-alive ones, lingering closes."""
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        with self._lock:
            returned, self._returned = self._returned, []
            self._wake_pending = False
        for conn in returned:
            self._park(sel, conn, self.lingering if conn.c.closing else self.idle)

    def _park(self, sel: selectors.BaseSelector, conn: Conn, where: dict[Conn, None]) -> None:
        where[conn] = None
        sel.register(conn.sock, selectors.EVENT_READ, conn)

    def _discard(self, sel: selectors.BaseSelector, conn: Conn) -> None:
        """A lingering connection is readable: read and drop what it sends; close when the linger is over."""
        c = conn.c
        try:
            data = conn.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            c.receive(data, monotonic())
        else:
            c.eof(monotonic())
        if not c.lingering:
            del self.lingering[conn]
            sel.unregister(conn.sock)
            close(conn)

    def _next_expiry(self) -> float | None:
        heads = [next(iter(where)).c.deadline()[0] for where in (self.fresh, self.idle, self.lingering) if where]
        return max(0.0, min(heads) - monotonic()) if heads else None

    def _expire(self, sel: selectors.BaseSelector, now: float) -> None:
        """Close the parked connections whose deadline has passed (the heads of the dicts: O(expired))."""
        for where in (self.fresh, self.idle, self.lingering):
            while where:
                conn = next(iter(where))
                if conn.c.expire(now) is None:
                    break
                del where[conn]
                sel.unregister(conn.sock)
                close(conn)

    def _stop_listening(self, sel: selectors.BaseSelector) -> None:
        """Take what the kernel queued (when ours to drain: closing over it would reset it), close the listener."""
        if self._drain_queue:
            self._accept(sel)
        sel.unregister(self.listener)
        self.listener.close()
        self._listener_closed.set()
