"""The threads engine: an acceptor thread, and a fixed pool of threads that admitted connections take turns on.

It runs alone as the `threadpool` model (one process, `serve()` below), and inside every worker of
`prefork --engine threads` / `hybrid-threads` (the Apache worker MPM, gunicorn `gthread -w N`): the same
code, given a listening socket and a runtime by whoever hosts it.

Who owns what. The *acceptor* thread owns the listening socket and a selector (epoll) holding every
connection that is waiting for something: brand-new ones that have not said anything yet, idle keep-alive
ones between requests, and lingering closes (see below). When a waiting connection becomes readable, the
acceptor puts it in the line for the pool. Each of the `--threads` *pool* threads ("pool-1" … "pool-N")
takes one connection at a time and owns it outright — its socket and its policy state
(`webmodels.connection`: deadlines, keep-alive, how to close, what to count) — until it gives it back or
closes it. A connection therefore belongs to exactly one thread at any moment, and the handoffs (the line
one way, a list plus a wake-up socketpair the other way) are the only places where threads meet. The
*main* thread only waits for signals (`signal.set_wakeup_fd`; the handlers do nothing) and runs the
shutdown.

How a request flows. accept (the policy's `new` clock starts) → (data already there? into the line : park
in the selector) → readable → line → a pool thread reads until the policy yields a request, runs
`dispatch_sync` on its own stack (effects such as `Sleep` block that thread), writes the response under the
policy's send deadline, then the response's after-hook runs once its bytes have left (which may kill the
process). Everything the handler does — CPU, sleeping, hanging, crashing — happens on that pool thread.

Admission: accept only what you can serve — and then serve it. A connection is *admitted* when its first
request arrives and either a thread is free or fewer than `--queue` new connections are already waiting
for their first turn; otherwise the acceptor answers that first request with a fast 503 and closes. That
is the only 503 the pool gives: once admitted, a connection's later requests always get their turn,
because a keep-alive connection is a promise (refusing its next request would punish a client for being
efficient — the old rule, a 503 whenever `threads + queue` connections were in the pool, turned 34 of 50
keep-alive clients away after their first response). Why a 503 and not the listen backlog: a client in
the backlog learns nothing until its own timeout, and a pool whose threads all hang (`/fault/hang`) would
hold it there forever; the 503 is an answer within a millisecond. Overload therefore shows as new
connections refused (`rejected_503`) while the admitted ones (`admitted`, `held_connections` in
`/_lab/stats`) slow down together: their latency grows with held connections ÷ threads.

Taking turns. The line is FIFO: new connections first (their client waits to learn whether it is served
at all; there are at most `--queue` of them unless a thread is free), then admitted ones in the order their
next request arrived. After a response, a pool thread keeps a connection only while nobody waits: if others
wait, a connection whose client already sent more goes to the back of the line and one that has not goes
back to the selector. When nobody waits, the thread waits a moment (HANDOFF_S, 2 ms) for the same client's
next request, because handing a busy connection back and forth costs more than the request itself. With 8
threads and 50 connections sending back to back every connection gets about 1/50 of the service
(benchmarks/fairness.py). Pipelined requests are answered in order, but they too yield the thread when
others wait. An idle keep-alive connection never pins a thread: it waits in the selector, where it costs
a few KiB (the C10k figure: 10,000 idle connections in one selector).

Timers. The acceptor keeps one ordered dict per deadline kind (`new`, `idle`, `linger`): each kind is a
constant offset from the moment its connection was put there (accept, end of the last response, last
response out), so each dict is in deadline order and every wake-up looks only at the heads — O(expired),
not O(connections). The wait is the earliest head's `deadline()`; its `expire()` says what to do (close).
(Pool threads hand connections back in very nearly the order their responses ended; an inversion of a
few microseconds delays a close by as much, never a wrong close.)

Closing is the policy's call (`Connection.closing`): close; abort (a reset: `SO_LINGER (1, 0)`) when the
client stopped reading for `--send-timeout`; or linger — shut down the write side, read and discard what
the client still sends, for at most LINGER_S (2 s) or LINGER_BYTES, so a 413 is not destroyed by a reset.
A lingering connection is handed to the acceptor, which reads and discards in its selector: a linger costs
a selector slot, not a pool thread for 2 s (during a shutdown, when the acceptor may be gone, the pool
thread lingers itself, within the grace period).

How it fails.
- Slow client: a client that has begun a request holds a pool thread while it trickles the rest, for up to
  `--header-timeout` (then 408 and close), longer with `--min-rate` if it keeps the rate. A few such
  clients take a few threads; `--threads` of them take the whole pool, and then new connections get 503
  while admitted ones wait. Silence alone costs no thread (it waits in the selector). A client that stops
  *reading* holds its thread for `--send-timeout` after the last progress, then is reset.
- Hung handler: nothing can interrupt a Python thread, so `/fault/hang` keeps its thread for as long as it
  hangs — a thread leak, visible as `busy_threads` that never goes down. Enough hangs and the pool is gone.
- Crash: the `threadpool` model is one process, so `/fault/crash` (or a segfault, or the OOM killer) takes
  every in-flight request and every open connection with it. Shared fate; a supervisor must restart the
  server. Inside a worker the same crash costs that worker's share only, and its master forks a new one.
- Leak: leaked memory belongs to the one process and is never returned until it restarts.
- CPU: the GIL lets one thread run Python at a time, so 32 threads burning CPU share one core; `/cpu`
  latency grows with the number of concurrent requests while throughput stays flat.
- Shared state: threads share memory, so `/counter?mode=unsafe` loses updates; `mode=locked` does not.

When is a threads worker hung? When every pool thread has been busy on its current request for longer than
`--timeout`: then it serves nobody, and the master kills it (SIGABRT, then SIGKILL) and forks a fresh one.
One hung thread of 16 does not trip it — the other 15 still serve, as in gunicorn's gthread (which only
watches its main loop). The runtime publishes the fact in the worker's board slot: `busy_since` is set when
the last free thread takes a request and cleared as soon as any thread finishes one. `busy_threads` per
worker in `/_lab/stats` shows how close each worker is. The acceptor is not a liveness signal: it runs on
while every pool thread hangs, which is exactly the side-thread trap.

Under a master, several workers' acceptors watch one shared listening socket, so a new connection wakes
every idle acceptor (a thundering herd: one wins `accept()`, the others get EAGAIN and go back to sleep);
with `--reuseport` each worker has its own listener and the kernel picks one.

Shutdown. SIGTERM: stop keeping connections alive (every response from now on says `Connection: close`),
then the acceptor drains the listen backlog — accepts until the kernel says EAGAIN and lets all of those in
(no 503 at a stop) — and only then closes the listener: closing it over connections the kernel already
completed would reset them, requests and all. Idle keep-alive connections are closed; new ones that have
not sent their request yet get up to FRESH_AT_STOP_S (within the grace) for it. The pool finishes what it
holds for up to `--graceful-timeout`, then the process returns anyway: pool threads are daemon threads, so
a hung one does not keep it alive. SIGINT/SIGQUIT (or a second signal during the drain): the same without
waiting or draining. `--max-requests` (in a worker) starts the same graceful shutdown once the worker has
started that many responses over all its connections (`Policy.exhausted`), and exits EXIT_RECYCLED; a
master's SIGHUP reaches a worker as SIGTERM. The window that remains: a connection that completes its
handshake after the drain's last accept and before the close (microseconds) is reset by the kernel — alone
or under `--reuseport`; with a shared listener (a master without `--reuseport`) the master keeps the socket
open, so it waits in the queue for a sibling or the next worker instead. A request sent on an idle keep-alive connection as we close it is lost the way HTTP/1.1
always loses it (the client sees the close and may retry an idempotent request); and a client that
connected but sends its request more than FRESH_AT_STOP_S later is closed unanswered.
"""

from __future__ import annotations

import os
import queue
import select
import selectors
import signal
import socket
import struct
import threading
import time
from collections import deque
from typing import Any

from webmodels import metrics
from webmodels.app import dispatch_sync
from webmodels.codec import BUSY_503, HttpError, error_response, render
from webmodels.config import Config
from webmodels.connection import ABORT, Limits, Policy
from webmodels.connection import Connection as Policed
from webmodels.exitcodes import EXIT_RECYCLED
from webmodels.listen import EXPECTED_NET_ERRORS, log_shutdown_begin, log_shutdown_end, log_startup, make_listener
from webmodels.log import log
from webmodels.runtime import Runtime

RECV_SIZE = 64 * 1024
# After a response, how long a pool thread waits for the same client's next request before handing the
# connection back to the acceptor — only when no other connection waits for a thread. A keep-alive client
# usually answers within tens of microseconds; a round trip through the selector costs two thread switches
# and three syscalls. (Not a lingering close: that is the policy's LINGER, done by the acceptor.)
HANDOFF_S = 0.002
# At a stop, a connection the drain accepted (or accepted just before) that has not sent its request yet gets
# this long (within --graceful-timeout) for it: its request may be on the wire.
FRESH_AT_STOP_S = 1.0
STOP_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGQUIT: "SIGQUIT"}
RECYCLE = 255  # a byte on the main thread's wake-up pipe that no signal number can be: --max-requests reached
_LISTENER, _WAKE = object(), object()  # selector tags; every other tag is a Conn
# How a pool thread lets go of a connection (what _serve returns).
_END, _PARK, _TURN = 0, 1, 2  # closed by the policy; idle → the acceptor's selector; has more → back of the line

monotonic = time.monotonic


class Conn:
    """One client connection and its policy state; owned by exactly one thread at a time."""

    __slots__ = ("sock", "c", "events", "admitted")

    def __init__(self, sock: socket.socket, c: Policed) -> None:
        self.sock = sock
        self.c = c  # webmodels.connection.Connection: deadlines, keep-alive, closing, accounting
        self.events: deque[Any] = deque()  # parsed but not yet answered (pipelining)
        self.admitted = False  # its first request was let in: from now on it always gets its turn


class ThreadsEngine:
    def __init__(self, config: Config, listener: socket.socket, rt: Runtime, max_requests: int = 0) -> None:
        self.config = config
        self.listener = listener
        self.runtime = rt
        self.policy = Policy(Limits.from_config(config, max_requests=max_requests), rt)
        self.threads = config.threads
        self.stopping = False
        self.recycling = False
        self.admitted = 0  # connections let in (their first request queued for a thread)
        self.rejected_503 = 0  # new connections turned away with a fast 503 (never an admitted one)
        rt.runners = config.threads  # all of them busy for longer than --timeout = hung (see the essay)
        rt.shared_by_threads()
        rt.engine_stats = self.stats
        self._lock = threading.Lock()  # guards _held, _busy, _new_waiting, _returned, _wake_pending, stopping
        self._held = 0  # connections in the pool: waiting for a thread or owned by one
        self._busy = 0  # pool threads holding a connection
        self._new_waiting = 0  # new connections waiting for their first turn (bounded by --queue when no thread is free)
        # The line: connections waiting for a thread, new ones first (their client waits to learn whether it is
        # served at all), then turns of admitted ones in arrival order. The SimpleQueue carries one token per
        # connection in the two deques: a thread that got a token is sure to find one.
        self._new: deque[Conn] = deque()
        self._turns: deque[Conn] = deque()
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._returned: list[Conn] = []  # handed back by pool threads (idle or lingering), not yet adopted
        self._wake_pending = False
        self._wake_r, self._wake_w = socket.socketpair()
        # Acceptor-only: parked connections, one dict per deadline kind, each in deadline order (a constant
        # offset from when it was put there), so the head of each dict is the next to expire.
        self._fresh: dict[Conn, None] = {}  # never sent anything: closed at the policy's `new` deadline
        self._idle: dict[Conn, None] = {}  # between keep-alive requests: closed at its `idle` deadline
        self._lingering: dict[Conn, None] = {}  # write side shut: read and discarded until the linger ends
        self._sig_r, self._sig_w = os.pipe()  # main thread's wake-up: signal numbers, or 0 for "drained"
        self._acceptor: threading.Thread | None = None
        self._listener_closed = threading.Event()
        self._accept_warned = 0.0
        self._grace_until = 0.0  # at a stop: fresh connections wait for their request until then

    # -- the main thread -----------------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the acceptor and the pool, wait for a stop signal, shut down; return the exit code."""
        for fd in (self._sig_r, self._sig_w):
            os.set_blocking(fd, False)
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda *_: None)  # the byte on the wakeup fd is all we need
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.listener.setblocking(False)
        for i in range(1, self.config.threads + 1):
            threading.Thread(target=self._pool_loop, name=f"pool-{i}", daemon=True).start()
        self._acceptor = threading.Thread(target=self._accept_loop, name="acceptor", daemon=True)
        self._acceptor.start()
        signame = None
        while signame is None:
            signame = self._wait_for_signal(None)
        self._shutdown(signame)
        return EXIT_RECYCLED if signame == "max-requests" else 0

    def _wait_for_signal(self, timeout: float | None) -> str | None:
        """Block until a stop signal (its name), a pool 'drained' note or TIMEOUT (None)."""
        ready, _, _ = select.select([self._sig_r], [], [], timeout)
        if not ready:
            return None
        try:
            data = os.read(self._sig_r, 512)
        except BlockingIOError:
            return None
        for signum in data:
            if signum in STOP_SIGNALS:
                return STOP_SIGNALS[signum]
            if signum == RECYCLE:
                return "max-requests"
        return None

    def _shutdown(self, signame: str) -> None:
        t0 = monotonic()
        grace = self.config.graceful_timeout if signame in ("SIGTERM", "max-requests") else 0.0
        log_shutdown_begin(signame, self.runtime.in_flight, grace)
        self._grace_until = t0 + min(grace, FRESH_AT_STOP_S)
        self.policy.drain()  # every response from now on says Connection: close
        with self._lock:
            self.stopping = True
        self._wake_acceptor()
        deadline = t0 + grace
        while self._busy_at_stop() and (left := deadline - monotonic()) > 0:
            again = self._wait_for_signal(min(left, 0.05))  # polled: the acceptor's share is not signalled
            if again in ("SIGINT", "SIGQUIT") or again == signame == "SIGTERM":
                break  # an impatient second signal: stop waiting
        drained = not self._busy_at_stop()
        log_shutdown_end(drained, self.runtime.in_flight, monotonic() - t0)
        # Hung pool threads are daemon threads: returning ends the process without them.

    def _busy_at_stop(self) -> bool:
        """Anything left to finish: a connection in the pool, or one the acceptor still waits on."""
        acceptor = self._acceptor
        return self._held > 0 or (acceptor is not None and acceptor.is_alive())

    # -- the acceptor thread -------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        """Own the listener and every waiting connection; hand readable ones to the pool."""
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, _LISTENER)
        sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        try:
            self._select_loop(sel)
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
                    if self._adopt(sel) and not stopped:
                        stopped = True
                        self._stop_accepting(sel)
                elif tag in self._lingering:
                    self._discard(sel, tag)
                elif tag in self._idle:
                    del self._idle[tag]
                    sel.unregister(tag.sock)
                    self._enqueue(tag, self._turns)
                elif tag in self._fresh:
                    del self._fresh[tag]
                    sel.unregister(tag.sock)
                    self._admit(tag)
                # else: closed earlier in this batch (a stop closes the idle ones)
            self._expire(sel, monotonic())
            if stopped and not (self._fresh or self._lingering):
                return  # nothing left for the acceptor: the pool finishes what it holds

    def _accept(self, sel: selectors.BaseSelector, draining: bool = False) -> None:
        """Accept until the kernel's queue is empty; DRAINING (at a stop): let in whatever it held."""
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
                if draining:
                    return
                time.sleep(0.01)
                return
            self.runtime.connection_accepted()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock, self.policy.connection(monotonic()))
            try:
                ready = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                self._park(sel, conn, self._fresh)  # connected but silent: wait here, not in a thread
                continue
            except OSError:
                ready = b""
            if ready:
                self._admit(conn, force=draining)  # the request is already there: skip a round through the selector
            else:
                sock.close()  # it left before saying anything
                conn.c.closed(monotonic())

    def _admit(self, conn: Conn, force: bool = False) -> None:
        """Let a new connection in — a free thread, or fewer than --queue new ones waiting — or answer 503.

        FORCE (the drain at a stop): its connection was established before the stop; it is served, not refused.
        """
        with self._lock:
            room = force or self.stopping or self._busy < self.threads or self._new_waiting < self.config.queue
            if room:
                self._new_waiting += 1
        if not room:
            self._reject(conn)
            return
        conn.admitted = True
        self.admitted += 1  # acceptor-only
        self._enqueue(conn, self._new)

    def _enqueue(self, conn: Conn, line: deque[Conn]) -> None:
        with self._lock:
            self._held += 1
        line.append(conn)
        self._tokens.put(None)

    def _reject(self, conn: Conn) -> None:
        sock = conn.sock
        try:
            # Read what the client sent first: closing over unread bytes makes the kernel send a RST,
            # which can destroy the 503 before the client reads it.
            if sock.recv(RECV_SIZE, socket.MSG_DONTWAIT) == b"":
                sock.close()  # it had left anyway
                conn.c.abort(monotonic())
                return
            sock.send(render(error_response(BUSY_503), False), socket.MSG_DONTWAIT)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # best effort: we are saturated and this client gets nothing better
        sock.close()
        conn.c.abort(monotonic())  # counted just below, as a 503, not as an abandoned request
        self.rejected_503 += 1  # acceptor-only
        self.runtime.request_finished(503, started=False)
        metrics.observe(self.runtime, metrics.OTHER_METHOD, None, 503, 0.0)

    def _adopt(self, sel: selectors.BaseSelector) -> bool:
        """Park connections the pool handed back (idle keep-alive ones, lingering closes); True once stopping."""
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        with self._lock:
            returned, self._returned = self._returned, []
            self._wake_pending = False
            stopping = self.stopping  # read with the list: nothing is handed back after this says True
        for conn in returned:
            if conn.c.closing:
                self._park(sel, conn, self._lingering)
            elif stopping:
                self._close(conn)  # idle at a stop: nothing asked, nothing owed
            else:
                self._park(sel, conn, self._idle)
        return stopping

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
        now = monotonic()
        if data:
            c.receive(data, now)
        else:
            c.eof(now)
        if not c.lingering:
            del self._lingering[conn]
            sel.unregister(conn.sock)
            self._close(conn)

    def _next_expiry(self) -> float | None:
        heads = [next(iter(where)).c.deadline()[0] for where in (self._fresh, self._idle, self._lingering) if where]
        if self.stopping and self._fresh:
            heads.append(self._grace_until)
        if not heads:
            return None
        return max(0.0, min(heads) - monotonic())

    def _expire(self, sel: selectors.BaseSelector, now: float) -> None:
        """Close the parked connections whose deadline has passed (the heads of the dicts: O(expired))."""
        for where in (self._fresh, self._idle, self._lingering):
            while where:
                conn = next(iter(where))
                if conn.c.expire(now) is None:
                    if where is self._fresh and self.stopping and now >= self._grace_until:
                        conn.c.abort(now)  # stopping: it had its chance to send a request
                    else:
                        break
                del where[conn]
                sel.unregister(conn.sock)
                self._close(conn)

    def _stop_accepting(self, sel: selectors.BaseSelector) -> None:
        """The first step of every shutdown: drain the listen backlog, close the listener and idle connections.

        With a grace period, connections the kernel already completed (waiting in the backlog) are accepted
        first and served: closing the listener over them would reset them, requests and all.
        """
        if self._grace_until > monotonic():
            self._accept(sel, draining=True)
        sel.unregister(self.listener)
        self.listener.close()
        self._listener_closed.set()
        for conn in self._idle:
            sel.unregister(conn.sock)
            self._close(conn)
        self._idle.clear()
        if self._grace_until <= monotonic():  # no grace: nor for the silent ones
            for conn in self._fresh:
                sel.unregister(conn.sock)
                self._close(conn)
            self._fresh.clear()

    def _close(self, conn: Conn) -> None:
        conn.sock.close()
        conn.c.closed(monotonic())

    # -- pool threads --------------------------------------------------------------------------------------------
    def _pool_loop(self) -> None:
        new, turns, lock = self._new, self._turns, self._lock
        while True:
            self._tokens.get()
            try:
                conn = new.popleft()
                first = True
            except IndexError:
                conn = turns.popleft()
                first = False
            with lock:
                self._busy += 1
                if first:
                    self._new_waiting -= 1
            how = _END
            try:
                how = self._serve(conn)
            except OSError as exc:
                if exc.errno in EXPECTED_NET_ERRORS or isinstance(exc, (BlockingIOError, socket.timeout)):
                    log.debug("connection lost: %s", exc)
                else:
                    log.exception("unexpected socket error")
                conn.sock.close()
                conn.c.closed(monotonic())  # counts a request the peer abandoned mid-way (FIN or RST) once
                how = -1
            except Exception:
                log.exception("unexpected error in %s", threading.current_thread().name)
                conn.sock.close()
                conn.c.abort(monotonic())
                how = -1
            self._release(conn, how)

    def _serve(self, conn: Conn) -> int:
        """Serve CONN's requests in order, under the policy; say how to let go of it (_END, _PARK, _TURN)."""
        sock, c, events, rt, policy = conn.sock, conn.c, conn.events, self.runtime, self.policy
        tokens = self._tokens
        while True:
            if not events:
                if not self._read(conn):
                    return _END
                continue
            ev = events.popleft()
            if isinstance(ev, HttpError):
                out = c.refuse(ev, monotonic())
            else:
                resp = dispatch_sync(ev, rt)
                out = c.respond(ev, resp, monotonic())
                if policy.exhausted and not self.recycling:
                    self._recycle()
            if not self._send(sock, c, out) or c.closing:
                return _END
            if events:  # pipelined: next in order, unless others wait for a thread
                if tokens.qsize():
                    return _TURN
                continue
            if not c.idle:
                continue  # a partial next request: read the rest here (a slow client holds this thread)
            if tokens.qsize():  # others wait: this one goes to the back of the line
                return _TURN if _readable(sock, 0.0) else _PARK
            if _readable(sock, HANDOFF_S):
                continue  # the client's next request came quickly: no round trip through the selector
            return _PARK

    def _read(self, conn: Conn) -> bool:
        """Feed CONN's policy once, waiting up to its deadline; False when the connection is done."""
        c = conn.c
        try:
            data = conn.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            now = monotonic()
            wait = c.timeout(now)
            if wait is None or wait > 0:
                _readable(conn.sock, wait)
                return True
            act = c.expire(now)
            if act is None:
                return True  # only an after-hook was due
            if act.reply:
                self._send(conn.sock, c, act.reply)
            return False
        now = monotonic()
        if not data:
            c.eof(now)
            return not c.closing
        conn.events.extend(c.receive(data, now))
        return True

    def _send(self, sock: socket.socket, c: Policed, data: bytes) -> bool:
        """Write DATA under the policy's send deadline (from the last progress); False if it aborted."""
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
                act = c.expire(now)  # the send deadline (abort), or an `after` hook that waited enough
                if act is not None and act.then == ABORT:
                    return False
            elif _writable(sock, timeout):
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

    def _release(self, conn: Conn, how: int) -> None:
        """Let go of CONN as HOW says: back of the line, back to the acceptor, or end it as the policy says."""
        if how == _TURN:
            self._turns.append(conn)  # still held: straight back in line, no round trip through the selector
            with self._lock:
                self._busy -= 1
            self._tokens.put(None)
            return
        if how == _END and self._finish(conn):
            if self.stopping:
                self._linger_here(conn)  # the acceptor may be gone already
            else:
                how = _PARK  # lingering: the acceptor reads and discards, not a pool thread
        with self._lock:
            self._held -= 1
            self._busy -= 1
            park = how == _PARK and not self.stopping
            if park:
                self._returned.append(conn)
                wake, self._wake_pending = not self._wake_pending, True
            drained = self.stopping and self._held == 0
        if park:
            if wake:
                self._wake_acceptor()
        elif how == _PARK:
            self._close(conn)  # idle at a stop
        if drained:
            _write_byte(self._sig_w)

    def _finish(self, conn: Conn) -> bool:
        """End CONN as `closing` says; True when it must linger (handed to the acceptor to read and discard)."""
        sock, c = conn.sock, conn.c
        try:
            if c.closing == ABORT:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_WR)  # our FIN right after the last byte
                if c.lingering:
                    return True
        except OSError:
            pass
        self._close(conn)
        return False

    def _linger_here(self, conn: Conn) -> None:
        """Read and discard until the linger ends (at most LINGER_S), on this thread; then close."""
        sock, c = conn.sock, conn.c
        try:
            while c.lingering:
                now = monotonic()
                wait = c.timeout(now)
                if wait == 0.0:
                    c.expire(now)
                    break
                if not _readable(sock, wait):
                    continue
                data = sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
                if data:
                    c.receive(data, monotonic())
                else:
                    c.eof(monotonic())
        except OSError:
            pass
        self._close(conn)

    # -- shared helpers --------------------------------------------------------------------------------------
    def _wake_acceptor(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # buffer full: it is awake already

    def _recycle(self) -> None:
        """--max-requests reached: stop accepting, then ask the main thread for the graceful shutdown.

        Called before the last response is sent, and waits (briefly) for the acceptor to close the listener:
        a client that reconnects after reading that response must find the listener gone, not be accepted
        here and then dropped by the shutdown. Under a shared listener its connection waits for a sibling.
        """
        with self._lock:
            if self.recycling:
                return
            self.recycling = True
        _write_byte(self._sig_w, RECYCLE)
        self._listener_closed.wait(0.5)

    def stats(self) -> dict[str, Any]:
        """The figures only this engine knows (handed to the runtime as its engine_stats)."""
        parked = len(self._idle) + len(self._fresh)
        return {
            "pool_size": self.config.threads,
            "queue_size": self.config.queue,
            # One handler per thread, so threads running a handler = requests in flight (hung ones included).
            "busy_threads": self.runtime.in_flight,
            "queued": self._tokens.qsize(),  # connections waiting for a thread (new ones and turns)
            "idle_keepalive": parked,  # parked in the selector (new silent ones too)
            "admitted": self.admitted,
            "rejected_503": self.rejected_503,
            "held_connections": self._held + len(self._idle),  # admitted and open: in the pool or parked idle
        }


def _readable(sock: socket.socket, timeout: float | None) -> bool:
    poller = select.poll()  # not select(): it cannot watch descriptors above 1023
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def _writable(sock: socket.socket, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def _write_byte(fd: int, value: int = 0) -> None:
    try:
        os.write(fd, bytes((value,)))
    except OSError:
        pass


def run(config: Config, sock: socket.socket, rt: Runtime, max_requests: int = 0) -> int:
    """Run the threads engine on SOCK until a stop signal (or --max-requests); return the exit status."""
    return ThreadsEngine(config, sock, rt, max_requests).run()


def serve(config: Config) -> int:
    """Run the threadpool model — the threads engine alone in one process — until a stop signal."""
    sock = make_listener(config)
    log_startup(config, sock, detail=f"threads={config.threads}")
    return run(config, sock, Runtime(config))
