"""The threads engine: an acceptor thread and a fixed pool of threads behind a bounded queue.

It runs alone as the `threadpool` model (one process, `serve()` below), and inside every worker of
`prefork --engine threads` / `hybrid-threads` (the Apache worker MPM, gunicorn `gthread -w N`): the same
code, given a listening socket and a runtime by whoever hosts it.

Who owns what. The *acceptor* thread owns the listening socket and a selector (epoll) holding every
connection that is waiting for its next request: brand-new ones that have not said anything yet and idle
keep-alive ones. When such a connection becomes readable, the acceptor hands it to the pool through a queue
of `--queue` slots. Each of the `--threads` *pool* threads ("pool-1" … "pool-N") takes one connection at a
time and owns it outright — its socket and its parser — until it gives it back or closes it. A connection
therefore belongs to exactly one thread at any moment, and the handoffs (queue one way, a list plus a
wake-up socketpair the other way) are the only places where threads meet. The *main* thread only waits for
signals (`signal.set_wakeup_fd`; the handlers do nothing) and runs the shutdown.

How a request flows. accept → (data already there? straight to the queue : park in the selector) →
readable → queue → a pool thread reads until the parser yields a request, runs `dispatch_sync` on its own
stack (effects such as `Sleep` block that thread), writes the response with one `sendall`, then runs
`resp.after` (which may kill the process). Everything the handler does — CPU, sleeping, hanging,
crashing — happens on that pool thread.

Accept only what you can serve. The pool holds at most `threads + queue` connections (queued or owned
by a thread, including the moment a thread spends waiting for a keep-alive client's next request). When a
readable connection finds the pool full, the acceptor answers a fast 503 and closes instead
of hoarding the socket: the client learns at once that the server is saturated, and the server's memory
and latency stay bounded. `/_lab/stats` shows `busy_threads`, `queued`, `idle_keepalive`, `rejected_503`.

Keep-alive policy. An idle keep-alive connection must not pin a pool thread, or N idle browsers would
starve everybody else. After a response the thread serves whatever pipelined requests the parser already
holds, in order; then it waits a moment (LINGER_S) for the client's next request, because handing a busy
connection back and forth costs more than the request itself; if nothing comes (or other connections are
queued), the connection goes back to the acceptor's selector and the thread is free. The acceptor closes
connections idle longer than `--keepalive` (0 = `Connection: close` after every response) and new
connections silent for `--header-timeout`.

How it fails.
- Slow client: a client that has begun a request holds a pool thread while it trickles the rest, for up to
  `--header-timeout` (then 408 and close). A few such clients take a few threads; `--threads` of them take
  the whole pool and everyone else gets 503. Silence alone costs no thread (it waits in the selector).
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

Shutdown. SIGTERM: close the listener and every idle connection, let the pool finish what it holds (each
response then says `Connection: close`) for up to `--graceful-timeout`, then return anyway: pool threads
are daemon threads, so a hung one does not keep the process alive. SIGINT/SIGQUIT (or a second signal
during the drain): the same without waiting. `--max-requests` (in a worker) starts the same graceful
shutdown once the worker has answered that many requests over all its connections, and exits EXIT_RECYCLED.
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

from webmodels.app import dispatch_sync, refuse
from webmodels.codec import BUSY_503, TIMEOUT_408, HttpError, RequestParser, error_response, render
from webmodels.config import Config
from webmodels.exitcodes import EXIT_RECYCLED
from webmodels.listen import EXPECTED_NET_ERRORS, log_shutdown_begin, log_shutdown_end, log_startup, make_listener
from webmodels.log import log
from webmodels.runtime import Runtime

RECV_SIZE = 64 * 1024
# After a response, how long a pool thread waits for the same client's next request before handing the
# connection back to the acceptor. A keep-alive client usually answers within tens of microseconds; a
# round trip through the selector costs two thread switches and three syscalls.
LINGER_S = 0.002
# A client that stops reading holds the thread writing to it for at most this long (SO_SNDTIMEO, enforced
# by the kernel so a normal send stays one syscall).
SEND_TIMEOUT_S = 30.0
STOP_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGQUIT: "SIGQUIT"}
RECYCLE = 255  # a byte on the main thread's wake-up pipe that no signal number can be: --max-requests reached
_LISTENER, _WAKE = object(), object()  # selector tags; every other tag is a Conn


class Conn:
    """One client connection and its parser; owned by exactly one thread at a time."""

    __slots__ = ("sock", "parser", "events", "since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = RequestParser()
        self.events: deque[Any] = deque()  # parsed but not yet answered (pipelining)
        self.since = time.monotonic()  # when it was parked (the idle timers count from here)


class ThreadsEngine:
    def __init__(self, config: Config, listener: socket.socket, rt: Runtime, max_requests: int = 0) -> None:
        self.config = config
        self.listener = listener
        self.runtime = rt
        self.max_requests = max_requests
        self.capacity = config.threads + config.queue
        self.stopping = False
        self.recycling = False
        self.rejected_503 = 0
        rt.runners = config.threads  # all of them busy for longer than --timeout = hung (see the essay)
        rt.shared_by_threads()
        rt.engine_stats = self.stats
        self._lock = threading.Lock()  # guards _held, _returned, _wake_pending, stopping
        self._held = 0  # connections in the pool: queued or owned by a pool thread
        self._queue: queue.SimpleQueue[Conn] = queue.SimpleQueue()
        self._returned: list[Conn] = []  # handed back by pool threads, not yet adopted by the acceptor
        self._wake_pending = False
        self._wake_r, self._wake_w = socket.socketpair()
        # Acceptor-only: parked connections in parking order, one dict per timeout so the oldest is first.
        self._fresh: dict[Conn, None] = {}  # never sent anything: closed after --header-timeout
        self._idle: dict[Conn, None] = {}  # between keep-alive requests: closed after --keepalive
        self._sig_r, self._sig_w = os.pipe()  # main thread's wake-up: signal numbers, or 0 for "drained"
        self._acceptor: threading.Thread | None = None
        self._listener_closed = threading.Event()
        self._accept_warned = 0.0

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
        t0 = time.monotonic()
        grace = self.config.graceful_timeout if signame in ("SIGTERM", "max-requests") else 0.0
        log_shutdown_begin(signame, self.runtime.in_flight, grace)
        with self._lock:
            self.stopping = True
        self._wake_acceptor()
        assert self._acceptor is not None
        self._acceptor.join(2.0)  # it only closes sockets
        deadline = t0 + grace
        while self._held > 0 and (left := deadline - time.monotonic()) > 0:
            again = self._wait_for_signal(left)
            if again in ("SIGINT", "SIGQUIT") or again == signame == "SIGTERM":
                break  # an impatient second signal: stop waiting
        drained = self._held == 0
        log_shutdown_end(drained, self.runtime.in_flight, time.monotonic() - t0)
        # Hung pool threads are daemon threads: returning ends the process without them.

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

    def _select_loop(self, sel: selectors.BaseSelector) -> None:
        while True:
            for key, _ in sel.select(self._next_expiry()):
                if key.data is _LISTENER:
                    self._accept(sel)
                elif key.data is _WAKE:
                    if not self._adopt(sel):
                        self._close_all(sel)
                        return
                else:
                    conn: Conn = key.data
                    sel.unregister(conn.sock)
                    (self._idle if conn in self._idle else self._fresh).pop(conn)
                    self._dispatch(conn)
            self._expire(sel)

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # Out of file descriptors, typically: leave the rest in the backlog and retry shortly.
                if time.monotonic() - self._accept_warned > 1.0:
                    self._accept_warned = time.monotonic()
                    log.warning("accept failed: %s", exc)
                time.sleep(0.01)
                return
            self.runtime.connection_accepted()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(SEND_TIMEOUT_S), 0))
            conn = Conn(sock)
            try:
                ready = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                self._park(sel, conn, self._fresh)  # connected but silent: wait here, not in a thread
                continue
            except OSError:
                ready = b""
            if ready:
                self._dispatch(conn)  # the request is already there: skip a round through the selector
            else:
                sock.close()

    def _dispatch(self, conn: Conn) -> None:
        """Give CONN to the pool, or answer 503 when every thread is busy and the queue is full."""
        with self._lock:
            room = self._held < self.capacity
            if room:
                self._held += 1
        if room:
            self._queue.put(conn)
        else:
            self._reject(conn)

    def _reject(self, conn: Conn) -> None:
        sock = conn.sock
        try:
            # Read what the client sent first: closing over unread bytes makes the kernel send a RST,
            # which can destroy the 503 before the client reads it.
            if sock.recv(RECV_SIZE, socket.MSG_DONTWAIT) == b"":
                sock.close()  # it had left anyway
                return
            sock.send(render(error_response(BUSY_503), False), socket.MSG_DONTWAIT)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # best effort: we are saturated and this client gets nothing better
        sock.close()
        with self._lock:
            self.rejected_503 += 1
        self.runtime.request_finished(503, started=False)

    def _adopt(self, sel: selectors.BaseSelector) -> bool:
        """Park connections the pool handed back; False once the server is stopping."""
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        with self._lock:
            returned, self._returned = self._returned, []
            self._wake_pending = False
            stopping = self.stopping
        for conn in returned:
            self._park(sel, conn, self._idle)
        return not stopping

    def _park(self, sel: selectors.BaseSelector, conn: Conn, where: dict[Conn, None]) -> None:
        conn.since = time.monotonic()
        where[conn] = None
        sel.register(conn.sock, selectors.EVENT_READ, conn)

    def _next_expiry(self) -> float | None:
        waits = [limit - (time.monotonic() - next(iter(where)).since)
                 for where, limit in ((self._fresh, self.config.header_timeout), (self._idle, self.config.keepalive))
                 if where]
        return max(0.0, min(waits)) if waits else None

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for where, limit in ((self._fresh, self.config.header_timeout), (self._idle, self.config.keepalive)):
            while where:
                conn = next(iter(where))
                if now - conn.since < limit:
                    break
                del where[conn]
                sel.unregister(conn.sock)
                conn.sock.close()

    def _close_all(self, sel: selectors.BaseSelector) -> None:
        """Stop accepting and close every idle connection (the first step of every shutdown)."""
        sel.unregister(self.listener)
        self.listener.close()
        self._listener_closed.set()
        for where in (self._fresh, self._idle):
            for conn in where:
                sel.unregister(conn.sock)
                conn.sock.close()
            where.clear()
        with self._lock:
            returned, self._returned = self._returned, []
        for conn in returned:
            conn.sock.close()
        sel.close()

    # -- pool threads --------------------------------------------------------------------------------------------
    def _pool_loop(self) -> None:
        while True:
            conn = self._queue.get()
            try:
                keep = self._serve(conn)
            except OSError as exc:
                if exc.errno in EXPECTED_NET_ERRORS or isinstance(exc, BlockingIOError):  # (send timeout)
                    log.debug("connection lost: %s", exc)
                else:
                    log.exception("unexpected socket error")
                keep = False
            except Exception:
                log.exception("unexpected error in %s", threading.current_thread().name)
                keep = False
            self._release(conn, keep)

    def _serve(self, conn: Conn) -> bool:
        """Serve CONN's requests in order; True = idle keep-alive (hand it back), False = close it."""
        sock, parser, events, rt = conn.sock, conn.parser, conn.events, self.runtime
        deadline = time.monotonic() + self.config.header_timeout
        while True:
            if not events:
                if not self._read(conn, deadline):
                    return False
                continue
            req = events.popleft()
            if isinstance(req, HttpError):
                sock.sendall(refuse(req, rt))
                return False
            resp = dispatch_sync(req, rt)
            if self.max_requests and rt.requests_here() >= self.max_requests and not self.recycling:
                self._recycle()
            keep = (req.keep_alive and not resp.close and self.config.keepalive > 0 and not self.stopping
                    and not self.recycling)
            sock.sendall(render(resp, keep))
            if resp.after is not None:
                resp.after()
            if not keep:
                return False
            deadline = time.monotonic() + self.config.header_timeout
            if events or not parser.idle:
                continue  # pipelined requests come first, in order
            if self._queue.qsize() == 0 and _readable(sock, LINGER_S):
                continue  # the client's next request came quickly: no round trip through the selector
            return True

    def _read(self, conn: Conn, deadline: float) -> bool:
        """Feed CONN's parser once, waiting until DEADLINE; False when the connection is done."""
        try:
            data = conn.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left > 0 and _readable(conn.sock, left):
                return True
            if conn.parser.idle:
                return False  # silence: close without a word
            conn.sock.sendall(refuse(TIMEOUT_408, self.runtime))
            return False
        if not data:
            err = conn.parser.eof()
            if err is not None:  # the client gave up mid-request; nobody to answer
                self.runtime.request_finished(err.status, started=False)
            return False
        conn.events.extend(conn.parser.feed(data))
        return True

    def _release(self, conn: Conn, keep: bool) -> None:
        """Give CONN back to the acceptor (KEEP) or close it; either way the pool holds one fewer."""
        with self._lock:
            self._held -= 1
            keep = keep and not self.stopping
            if keep:
                self._returned.append(conn)
                wake, self._wake_pending = not self._wake_pending, True
            drained = self.stopping and self._held == 0
        if keep:
            if wake:
                self._wake_acceptor()
        else:
            conn.sock.close()
        if drained:
            _write_byte(self._sig_w)

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
            self.recycling = self.stopping = True
        self._wake_acceptor()
        _write_byte(self._sig_w, RECYCLE)
        self._listener_closed.wait(0.5)

    def stats(self) -> dict[str, Any]:
        """The figures only this engine knows (handed to the runtime as its engine_stats)."""
        return {
            "pool_size": self.config.threads,
            "queue_size": self.config.queue,
            # One handler per thread, so threads running a handler = requests in flight (hung ones included).
            "busy_threads": self.runtime.in_flight,
            "queued": self._queue.qsize(),
            "idle_keepalive": len(self._idle) + len(self._fresh),  # parked in the selector (new silent ones too)
            "rejected_503": self.rejected_503,
        }


def _readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()  # not select(): it cannot watch descriptors above 1023
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


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
