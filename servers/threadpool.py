"""The threads engine: an acceptor thread, and a fixed pool of threads that admitted connections take turns on.

It runs alone as the `threadpool` model (one process), and inside every worker of `prefork --engine threads` /
`hybrid-threads` (Apache's worker MPM, gunicorn `gthread -w N`): the same code, given a listening socket.

# What each thread owns
The *acceptor* (servers/acceptor.py) owns the listening socket and a selector (epoll) of every connection that
is waiting for something: new ones that have not said anything yet, idle keep-alive ones, lingering closes.
Each of the `--threads` *pool* threads takes one connection at a time and owns it outright — its socket and its
policy state (webmodels.connection) — until it gives it back or closes it. A connection belongs to exactly one
thread at any moment; the handoffs (the line one way, a list plus a wake-up socketpair the other way) are the
only places threads meet. The *main* thread waits for the lifecycle (signals, a recycle) and runs the stop.

# How a request flows
accept → (data already there? into the line : park in the selector) → readable → *admission* → the line → a
pool thread reads until the policy yields a request, runs `dispatch_sync` on its own stack (effects block that
thread), writes the answer under the send deadline (servers/blocking.py), then the after-hook runs once its
bytes have left. Admission is the policy's rule (`Policy.admits`): a new connection's first request gets a
thread if one is free or fewer than `--queue` new ones already wait; otherwise the policy's fast 503. Once
admitted, a connection always gets its turn: a keep-alive connection is a promise. Overload shows as new
connections refused (`rejected_503`) while admitted ones (`held_connections`) slow down together.

Taking turns: the line is FIFO — new connections first, then admitted ones in the order their next request
arrived. After a response a thread keeps a connection only while nobody waits: if others wait, one whose client
already sent more goes to the back of the line, one that has not goes back to the selector; when nobody waits,
it waits a moment (HANDOFF_S) for the same client (a round trip through the selector costs more than a
request). An idle keep-alive connection never pins a thread: it waits in the selector, for a few KiB.

The acceptor (servers/acceptor.py) keeps the deadlines of what waits in its selector; a pool thread keeps
those of the one connection it holds.

# How it fails
- Slow client: one that has begun a request holds a pool thread while it trickles (up to `--header-timeout`,
  longer with `--min-rate`); `--threads` of them take the whole pool, then new connections get 503 while
  admitted ones wait. Silence costs no thread (the selector). A client that stops reading holds its thread for
  `--send-timeout` after the last progress, then is reset.
- Hung handler: nothing can interrupt a Python thread, so `/fault/hang` keeps its thread as long as it hangs —
  a thread leak, `busy_threads` that never goes down. Under a master a worker is *hung* only when every pool
  thread is busy for longer than `--timeout` (gthread's rule: one hung thread of 16 does not trip it); the
  runtime's `busy_since` says since when. The acceptor is no liveness signal: it runs on while the pool hangs.
- Crash: one process, so `/fault/crash` takes every in-flight request and open connection with it (a worker's
  share under a master, which forks a new one). Leak: kept until the process restarts.
- CPU: the GIL lets one thread run Python at a time: `/cpu` latency grows with concurrency, throughput does not.
- Shared state: threads share memory, so `/counter?mode=unsafe` loses updates; `mode=locked` does not.

# How it stops
servers/lifecycle.py decides the kind of stop; here, the acceptor drains the listen queue when it is ours to
drain (accepts until the kernel says EAGAIN and admits them all: no 503 at a stop), closes the listener, then
keeps applying the policy's deadlines, which at a stop close idle connections at once and silent ones within a
second. The main thread waits until the pool holds nothing, up to `--graceful-timeout`; pool threads are daemon
threads, so a hung one does not keep the process alive.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import threading
from collections import deque
from typing import Any

from webmodels.app import dispatch_sync
from webmodels.codec import HttpError
from webmodels.config import Config
from webmodels.connection import ABORT
from webmodels.log import log
from webmodels.runtime import Runtime

from . import blocking
from .acceptor import Acceptor, Conn, close
from .blocking import RECV_SIZE, readable
from .lifecycle import Lifecycle, monotonic, serve_alone

HANDOFF_S = 0.002  # after a response, wait this long for the same client's next request when nobody waits
_END, _PARK, _TURN = 0, 1, 2  # how a pool thread lets go: closed; idle → the selector; has more → the line


class ThreadsEngine:
    def __init__(self, config: Config, listener: socket.socket, rt: Runtime, life: Lifecycle) -> None:
        self.listener, self.rt, self.life, self.policy = listener, rt, life, life.policy
        self.runners = self.threads = config.threads  # all of them busy > --timeout = hung (see the essay)
        self.admitted = 0  # connections let in (acceptor-only)
        self.rejected_503 = 0  # new connections turned away at admission (acceptor-only)
        rt.shared_by_threads()
        self._lock = threading.Lock()  # guards _held, _busy, _new_waiting, _serving
        self._held = self._busy = self._new_waiting = 0
        # The line: new connections first, then turns of admitted ones; one token per connection in the deques.
        self._new: deque[Conn] = deque()
        self._turns: deque[Conn] = deque()
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._serving: set[Conn] = set()  # owned by a pool thread right now (a fast stop resets them)
        self._sig_r, self._sig_w = os.pipe()  # the main thread's: signal numbers, wake(), "nothing held"
        for fd in (self._sig_r, self._sig_w):
            os.set_blocking(fd, False)
        self.acceptor = Acceptor(listener, rt, self.policy, self._admit, lambda conn: self._enqueue(conn, self._turns),
                                 self.wake)

    # -- the lifecycle's side (main thread) -------------------------------------------------------------------
    def wakeup_fd(self) -> int:
        return self._sig_w

    def wake(self) -> None:
        _write_byte(self._sig_w)

    def serve(self) -> None:
        """Start the pool and the acceptor; wait until the lifecycle says stop."""
        for i in range(1, self.threads + 1):
            threading.Thread(target=self._pool_loop, name=f"pool-{i}", daemon=True).start()
        self.acceptor.start()
        while not self.life.reason:
            self._wait_main(None)

    def stop_accepting(self, drain_queue: bool) -> int:
        before = self.admitted
        self.acceptor.stop_listening(drain_queue)
        return self.admitted - before

    def finish(self, deadline: float) -> bool:
        """Wait until the pool and the acceptor hold nothing, DEADLINE passes or the stop turns fast."""
        while self._busy_at_stop() and not self.life.fast and (left := deadline - monotonic()) > 0:
            self._wait_main(min(left, 0.05))  # polled: the acceptor's share is not signalled
        return not self._busy_at_stop()

    def abort_all(self) -> None:
        """Reset what the pool threads serve (they are daemon threads: returning ends the process)."""
        with self._lock:
            serving = list(self._serving)
        for conn in serving:
            blocking.abort(conn.sock, conn.c)

    def close(self) -> None:
        pass

    def _wait_main(self, timeout: float | None) -> None:
        if select.select([self._sig_r], [], [], timeout)[0]:
            try:
                os.read(self._sig_r, 512)
            except BlockingIOError:
                pass

    def _busy_at_stop(self) -> bool:
        return self._held > 0 or self.acceptor.alive()

    # -- admission (called by the acceptor) -------------------------------------------------------------------
    def _admit(self, conn: Conn) -> None:
        """Let a new connection's first request in, or turn it away with the policy's 503."""
        with self._lock:
            room = self.policy.admits(self._busy, self.threads, self._new_waiting)
            if room:
                self._new_waiting += 1
        if not room:
            self.rejected_503 += 1
            blocking.reject(conn.sock, conn.c)
            return
        self.admitted += 1
        self._enqueue(conn, self._new)

    def _enqueue(self, conn: Conn, line: deque[Conn]) -> None:
        with self._lock:
            self._held += 1
        line.append(conn)
        self._tokens.put(None)

    # -- pool threads -------------------------------------------------------------------------------------------
    def _pool_loop(self) -> None:
        new, turns, lock = self._new, self._turns, self._lock
        while True:
            self._tokens.get()
            try:
                conn, first = new.popleft(), True
            except IndexError:
                conn, first = turns.popleft(), False
            with lock:
                self._busy += 1
                self._serving.add(conn)
                if first:
                    self._new_waiting -= 1
            try:
                how = self._serve(conn)
            except OSError as exc:
                blocking.lost(exc)
                close(conn)  # counts a request the peer abandoned mid-way (FIN or reset) once
                how = -1
            except Exception:
                log.exception("unexpected error in %s", threading.current_thread().name)
                blocking.abort(conn.sock, conn.c)
                how = -1
            self._release(conn, how)

    def _serve(self, conn: Conn) -> int:
        """Serve CONN's requests in order, under the policy; say how to let go of it (_END, _PARK, _TURN)."""
        sock, c, events, rt, tokens = conn.sock, conn.c, conn.events, self.rt, self._tokens
        while True:
            if not events:
                if not self._read(conn):
                    return _END
                continue
            ev = events.popleft()
            if isinstance(ev, HttpError):
                out = c.refuse(ev, monotonic())
            else:
                out = c.respond(ev, dispatch_sync(ev, rt), monotonic())
            if not blocking.send(sock, c, out) or c.closing:
                return _END
            if events:  # pipelined: next in order, unless others wait for a thread
                if tokens.qsize():
                    return _TURN
                continue
            if not c.idle:
                continue  # a partial next request: read the rest here (a slow client holds this thread)
            if tokens.qsize():  # others wait: this one goes to the back of the line
                return _TURN if readable(sock, 0.0) else _PARK
            if self.policy.draining:
                return _PARK  # at a stop its idle deadline is now: the policy closes it
            if readable(sock, HANDOFF_S):
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
                readable(conn.sock, wait)
                return True
            act = c.expire(now)
            if act is None:
                return True  # only an after-hook was due
            if act.reply:
                blocking.send(conn.sock, c, act.reply)
            return False
        now = monotonic()
        if not data:
            c.eof(now)
            return not c.closing
        conn.events.extend(c.receive(data, now))
        return True

    def _release(self, conn: Conn, how: int) -> None:
        """Let go of CONN as HOW says: back of the line, back to the acceptor, or end it as the policy says."""
        with self._lock:
            self._serving.discard(conn)
        if how == _TURN:
            self._turns.append(conn)  # still held: straight back in line, no round trip through the selector
            with self._lock:
                self._busy -= 1
            self._tokens.put(None)
            return
        if how == _END:
            how = self._end(conn)
        if how == _PARK and not self.acceptor.give_back(conn):  # a stop, and the acceptor has left: end it here
            if not conn.c.lingering:
                conn.c.expire(monotonic())  # idle at a stop: its deadline is now
            blocking.linger(conn.sock, conn.c)
            close(conn)
        with self._lock:
            self._held -= 1
            self._busy -= 1
            drained = bool(self.life.reason) and self._held == 0
        if drained:
            self.wake()

    def _end(self, conn: Conn) -> int:
        """End CONN as the policy says; a lingering close goes to the acceptor (a selector slot, not a thread)."""
        if conn.c.closing == ABORT:
            blocking.finish(conn.sock, conn.c)
            return _END
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # our FIN right after the last byte
        except OSError:
            pass
        if conn.c.lingering:
            return _PARK
        close(conn)
        return _END

    def stats(self) -> dict[str, Any]:
        """The figures only this engine knows."""
        return {
            "pool_size": self.threads,
            "queue_size": self.policy.limits.queue,
            # One handler per thread, so threads running a handler = requests in flight (hung ones included).
            "busy_threads": self.rt.in_flight,
            "queued": self._tokens.qsize(),  # connections waiting for a thread (new ones and turns)
            "idle_keepalive": len(self.acceptor.idle) + len(self.acceptor.fresh),  # parked in the selector (new silent ones too)
            "admitted": self.admitted,
            "rejected_503": self.rejected_503,
            "held_connections": self._held + len(self.acceptor.idle),  # admitted and open: in the pool or parked idle
        }


def _write_byte(fd: int) -> None:
    try:
        os.write(fd, b"\0")
    except OSError:
        pass


def serve(config: Config) -> int:
    """Run the threadpool model — the threads engine alone in one process — until a stop signal."""
    return serve_alone(ThreadsEngine, config, f"threads={config.threads}")
