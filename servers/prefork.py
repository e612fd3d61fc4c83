"""Prefork: a master process that never serves, and worker processes that serve one connection at a time.

# What each process owns
The **master** binds the listening socket, imports the whole application, then forks `--workers` children.
After that it only supervises: it owns the list of workers, a shared-memory *board* (an anonymous
`mmap` created before the first fork, so every child sees the same pages), and a self-pipe on which
signals wake it up. Its main loop is four named steps, as in gunicorn's arbiter:

    wait_for_signals → reap_workers → murder_workers → manage_workers

Signal handlers do no work: they append the signal number to a queue, and `signal.set_wakeup_fd` writes a
byte to the pipe so the `select` in `wait_for_signals` returns at once (no EINTR games, no reentrancy).

Each **worker** owns its own memory — its own copy of every module, every counter, every leak — and one
slot of the board, where it publishes its pid, the time its current request started (`busy_since`, the
heartbeat the master judges it by) and its request counters. Any worker can answer `/_lab/stats` for the
whole server by reading the board: that is real inter-process communication, through shared memory.

# How a request flows
All workers block in `accept()` on the one inherited listening socket. Linux wakes exactly one of the
processes blocked in `accept()` for each new connection (an exclusive wait queue), so there is no
thundering herd here; a design that `select`s first and then accepts would wake them all. The winner
reads the request with a deadline (`--header-timeout`), runs the handler on its only thread — blocking on
simulated I/O, burning CPU truly in parallel with its siblings on other cores — writes the response and,
by default, closes the connection (`--keepalive 0`, as gunicorn's sync worker does: a worker that waits
on an idle keep-alive connection serves nobody else; set `--keepalive S` to watch other clients starve).

# How it fails
- **A crash** (`/fault/crash`, a segfault, `kill -9`) costs the one request the worker was serving. The
  kernel delivers SIGCHLD, the master reaps the corpse, logs why it died and forks a replacement in a few
  milliseconds. The other workers never notice. Connections that arrive meanwhile wait in the backlog.
- **A hang** makes `busy_since` grow old. Once it is older than `--timeout`, the master sends SIGABRT (the
  worker exits at once with status 89) and, if that is not enough within 0.15 s, SIGKILL; then it
  respawns. Between the hang and the kill, the server has one worker fewer.
- **A slow client** holds a worker only until the header timeout (408), not forever.
- **A leak** stays in the worker that leaked. `--max-requests N` (+ `--max-requests-jitter`, so workers do
  not all restart together) recycles workers and bounds it.
- **A worker that cannot boot** (exits with status 3 before it is ready) stops the whole server with a
  clear error, instead of being respawned in a tight loop forever.
- **The master dying** takes every worker with it (`PR_SET_PDEATHSIG`), so no orphan keeps the port.

# Signals (to the master)
TERM graceful stop (workers finish their request, up to `--graceful-timeout`) · INT/QUIT fast stop ·
TTIN one worker more · TTOU one worker fewer · HUP replace every worker · CHLD a worker died.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import mmap
import os
import random
import select
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from webmodels import codec, faults
from webmodels.app import dispatch_sync, refuse
from webmodels.config import Config
from webmodels.listen import EXPECTED_NET_ERRORS, log_shutdown_begin, log_shutdown_end, log_startup, make_listener
from webmodels.log import log
from webmodels.runtime import Runtime

MAX_WORKERS = 64
KILL_GRACE = 0.15  # after SIGABRT, how long a hung worker gets before SIGKILL
FAST_STOP_GRACE = 1.0  # SIGINT/SIGQUIT: how long workers get before SIGKILL
EXIT_CAUSES = ("crash", "signal", "timeout", "recycled", "clean", "boot")


# -- the board: shared memory every process maps at the same place -----------------------------------------------
class Slot(ctypes.Structure):
    """One worker's corner of the board; only that worker writes its counters (so no locks)."""
    _fields_ = [
        ("pid", ctypes.c_int64), ("index", ctypes.c_int64), ("booted", ctypes.c_int64),
        ("busy_since", ctypes.c_double),  # time.monotonic() when the current request started; 0 = idle
        ("requests", ctypes.c_int64), ("in_flight", ctypes.c_int64),
        ("errors_4xx", ctypes.c_int64), ("errors_5xx", ctypes.c_int64),
    ]


class Board(ctypes.Structure):
    """Master-written totals plus one slot per possible worker."""
    _fields_ = [
        ("master_pid", ctypes.c_int64), ("target_workers", ctypes.c_int64), ("spawns", ctypes.c_int64),
        ("respawns", ctypes.c_int64),  # spawns that replaced a worker which died without being asked to
        *[(f"exits_{cause}", ctypes.c_int64) for cause in EXIT_CAUSES],
        # counters of workers that have died, folded in by the master when it reaps them
        ("retired_requests", ctypes.c_int64), ("retired_4xx", ctypes.c_int64), ("retired_5xx", ctypes.c_int64),
        ("slots", Slot * MAX_WORKERS),
    ]


def new_board() -> Board:
    # MAP_SHARED | MAP_ANONYMOUS: survives fork as the *same* pages, never touches a disk (/tmp in a
    # container can be an overlay on disk, and a slow fsync there means false timeouts).
    buf = mmap.mmap(-1, ctypes.sizeof(Board), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    return Board.from_buffer(buf)


class PreforkRuntime(Runtime):
    """The runtime a worker hands to the handler: its counters live in its board slot."""
    model = "prefork"
    role = "worker"

    def __init__(self, config: Config, board: Board) -> None:
        super().__init__(config)
        self.board = board
        self.slot: Slot | None = None

    def request_started(self) -> None:
        self.slot.in_flight += 1  # type: ignore[union-attr]

    def request_finished(self, status: int, started: bool = True) -> None:
        slot = self.slot
        if started:
            slot.in_flight -= 1  # type: ignore[union-attr]
        slot.requests += 1  # type: ignore[union-attr]
        if 400 <= status < 500:
            slot.errors_4xx += 1  # type: ignore[union-attr]
        elif status >= 500:
            slot.errors_5xx += 1  # type: ignore[union-attr]

    def requests_here(self) -> int:
        return self.slot.requests if self.slot else 0

    def live_slots(self) -> list[Slot]:
        return [s for s in self.board.slots if s.pid]

    def counters(self) -> dict[str, Any]:
        b, live = self.board, self.live_slots()
        return {
            "requests": b.retired_requests + sum(s.requests for s in live),
            "in_flight": sum(s.in_flight for s in live),
            "errors_4xx": b.retired_4xx + sum(s.errors_4xx for s in live),
            "errors_5xx": b.retired_5xx + sum(s.errors_5xx for s in live),
            "workers": len(live),
            "target_workers": b.target_workers,
            "busy_workers": sum(1 for s in live if s.busy_since),
            "worker_spawns": b.spawns,
            "worker_exits": {cause: getattr(b, f"exits_{cause}") for cause in EXIT_CAUSES},
            "respawns": b.respawns,
        }

    def process_roles(self) -> dict[int, str]:
        roles = {int(self.board.master_pid): "master"}
        roles.update({int(s.pid): "worker" for s in self.live_slots()})
        return roles

    def server_pid(self) -> int:
        return int(self.board.master_pid)

    def worker_pids(self) -> list[int]:
        return [int(s.pid) for s in self.live_slots()]

    def scale(self, delta: int) -> int:
        """Ask the master for DELTA workers more (or fewer) with SIGTTIN/SIGTTOU, one at a time.

        One at a time because the kernel merges two identical signals sent before the first is handled;
        we wait (briefly) to see the master's target move before sending the next. The master stays the
        only writer of the board's target.
        """
        sig = signal.SIGTTIN if delta > 0 else signal.SIGTTOU
        for _ in range(abs(delta)):
            before = self.board.target_workers
            os.kill(self.server_pid(), sig)
            deadline = time.monotonic() + 1.0
            while self.board.target_workers == before and time.monotonic() < deadline:
                time.sleep(0.002)
            if self.board.target_workers == before:
                break  # at the limit (1 or MAX_WORKERS), or the master is busy: stop asking
        return int(self.board.target_workers)

    def kill_process(self) -> None:
        # The master first: with it gone nothing respawns; its death also SIGKILLs every worker (pdeathsig).
        for pid in [self.server_pid(), *self.worker_pids()]:
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        os.kill(os.getpid(), signal.SIGKILL)


# -- the worker --------------------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by the worker's SIGTERM handler to break out of a blocking accept()."""


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: an orphan notices on its next accept timeout (none here)
        pass


class Worker:
    """Runs in the child after fork(); never returns — the child leaves with os._exit()."""

    def __init__(self, config: Config, sock: socket.socket, runtime: PreforkRuntime, slot: Slot) -> None:
        self.config, self.sock, self.rt, self.slot = config, sock, runtime, slot
        self.alive = True
        self.busy = False
        self.max_requests = 0

    def boot(self) -> None:
        for sig in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, lambda *_: os._exit(0))
        signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))
        # The master's verdict "you are hung": leave at once with a status that says so.
        signal.signal(signal.SIGABRT, lambda *_: os._exit(faults.EXIT_TIMEOUT))
        _die_with_parent()
        if os.getppid() != self.rt.board.master_pid:
            os._exit(0)  # the master died between fork and prctl
        random.seed()  # fork copied the master's RNG state: without this every worker draws the same numbers
        if self.config.faults and os.environ.get("WEBMODELS_FAULT_BOOT") == "1":
            raise RuntimeError("WEBMODELS_FAULT_BOOT=1: refusing to boot (the respawn-loop experiment)")
        self.max_requests = self.config.max_requests
        if self.max_requests and self.config.max_requests_jitter:
            self.max_requests += random.randint(0, self.config.max_requests_jitter)
        self.sock.setblocking(True)
        self.rt.slot = self.slot
        self.slot.booted = 1

    def _on_term(self, signum: int, frame: object) -> None:
        self.alive = False
        if not self.busy:
            raise _Stop()  # interrupt accept()/recv() now; a busy worker finishes its request first

    def run(self) -> int:
        while self.alive:
            try:
                conn, _ = self.sock.accept()
            except _Stop:
                return 0
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EMFILE, errno.ENFILE):
                    continue
                raise
            try:
                self.serve(conn)
            except _Stop:
                pass
            finally:
                _close(conn)
            if self.max_requests and self.slot.requests >= self.max_requests:
                return faults.EXIT_RECYCLED
        return 0

    def serve(self, conn: socket.socket) -> None:
        """Serve one connection: one request, or several with --keepalive, then return (caller closes)."""
        parser = codec.RequestParser()
        cfg = self.config
        deadline = time.monotonic() + cfg.header_timeout
        while True:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return self._timed_out(conn, parser)
            conn.settimeout(timeout)
            try:
                data = conn.recv(65536)
            except socket.timeout:
                return self._timed_out(conn, parser)
            except OSError as exc:
                if exc.errno in EXPECTED_NET_ERRORS:
                    log.debug("client went away: %s", exc)
                    return None
                raise
            if not data:
                err = parser.eof()
                if err:
                    self.rt.request_finished(err.status, started=False)
                return None
            was_idle = parser.idle
            for event in parser.feed(data):
                if isinstance(event, codec.HttpError):
                    return self._send(conn, refuse(event, self.rt))
                self.busy = True  # from here until the reply is out, SIGTERM waits for us
                self.slot.busy_since = time.monotonic()
                try:
                    resp = dispatch_sync(event, self.rt)
                finally:
                    self.slot.busy_since = 0.0
                keep = (event.keep_alive and not resp.close and cfg.keepalive > 0 and self.alive
                        and not (self.max_requests and self.slot.requests >= self.max_requests))
                try:
                    sent = self._send(conn, codec.render(resp, keep))
                    if resp.after is not None:
                        resp.after()
                finally:
                    self.busy = False
                if not keep or sent is False:
                    return None
                deadline = time.monotonic() + cfg.keepalive
            if was_idle and not parser.idle:
                # a new request began: the client now has --header-timeout to finish its head
                deadline = time.monotonic() + cfg.header_timeout

    def _timed_out(self, conn: socket.socket, parser: codec.RequestParser) -> None:
        if parser.in_head:
            self._send(conn, refuse(codec.TIMEOUT_408, self.rt))

    def _send(self, conn: socket.socket, data: bytes) -> bool:
        try:
            conn.settimeout(self.config.header_timeout)  # a client that never reads must not pin us
            conn.sendall(data)
            return True
        except OSError as exc:
            if isinstance(exc, socket.timeout) or exc.errno in EXPECTED_NET_ERRORS:
                log.debug("send failed: %s", exc)
                return False
            raise


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_WR)  # FIN after the response, so unread input cannot turn it into a RST
    except OSError:
        pass
    conn.close()


# -- the master --------------------------------------------------------------------------------------------------
@dataclass
class WorkerInfo:
    pid: int
    index: int
    slot: int
    spawned: float
    retiring: bool = False  # told to stop (TTOU, HUP, shutdown); no longer counts toward the target
    aborted_at: float = 0.0  # when we sent SIGABRT for --timeout
    killed: bool = False


class Master:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
               signal.SIGCHLD)

    def __init__(self, config: Config, sock: socket.socket) -> None:
        self.config, self.sock = config, sock
        self.board = new_board()
        self.board.master_pid = os.getpid()
        self.board.target_workers = config.workers
        self.runtime = PreforkRuntime(config, self.board)
        self.workers: dict[int, WorkerInfo] = {}
        self.sig_queue: list[int] = []
        self.stopping = False
        self.stop_deadline = 0.0
        self.stop_started = 0.0
        self.exit_code = 0
        self.pending_replacements = 0
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> int:
        for sig in self.SIGNALS:
            signal.signal(sig, self._queue_signal)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        if self.config.gc_freeze:
            gc.collect()
            gc.freeze()  # move everything to a permanent generation: the GC stops writing to (and
            # so un-sharing) the pages of objects every worker inherited
        log_startup(self.config, self.sock, detail=f"workers={self.config.workers}")
        self.manage_workers()
        while True:
            self.wait_for_signals(self._sleep_time())
            while self.sig_queue:
                sig = self.sig_queue.pop(0)
                getattr(self, f"handle_{signal.Signals(sig).name[3:].lower()}")()
            self.reap_workers()
            self.murder_workers()
            if self.stopping:
                if not self.workers:
                    log_shutdown_end(True, 0, time.monotonic() - self.stop_started)
                    return self.exit_code
                if time.monotonic() >= self.stop_deadline:
                    self._force_stop()
                continue
            self.manage_workers()

    def _queue_signal(self, signum: int, frame: object) -> None:
        # No work here (no logging, no reaping). Python may call this once for two signals of the same
        # kind that arrived before it ran, so the queue is filled from the wakeup pipe instead: the C-level
        # handler writes one byte (the signal number) per delivery. The kernel itself still merges two
        # identical standard signals sent before the first was delivered — `kill -TTIN` twice in a row
        # may add one worker; send the second after the log line of the first.
        pass

    def _sleep_time(self) -> float:
        """Sleep until the nearest deadline: a busy worker's --timeout, a pending SIGKILL, the drain end."""
        now = time.monotonic()
        wake = now + (min(1.0, self.config.timeout / 2) if self.config.timeout else 1.0)
        for w in self.workers.values():
            if w.aborted_at and not w.killed:
                wake = min(wake, w.aborted_at + KILL_GRACE)
            busy = self.board.slots[w.slot].busy_since
            if self.config.timeout and busy and not w.aborted_at:
                wake = min(wake, busy + self.config.timeout)
        if self.stopping:
            wake = min(wake, self.stop_deadline)
        return max(0.0, wake - now)

    def wait_for_signals(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self.wake_r], [], [], timeout)
        except InterruptedError:
            return
        if ready:
            try:
                while data := os.read(self.wake_r, 4096):
                    self.sig_queue.extend(data)
            except BlockingIOError:
                pass

    def reap_workers(self) -> None:
        """Collect every dead child (waitpid WNOHANG until nothing is left), say why it died."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            slot = self.board.slots[w.slot]
            booted = bool(slot.booted)
            cause, how = self._exit_cause(w, status, booted)
            setattr(self.board, f"exits_{cause}", getattr(self.board, f"exits_{cause}") + 1)
            b = self.board
            b.retired_requests += slot.requests
            b.retired_4xx += slot.errors_4xx
            b.retired_5xx += slot.errors_5xx
            ctypes.memset(ctypes.addressof(slot), 0, ctypes.sizeof(Slot))
            lived = time.monotonic() - w.spawned
            level = log.info if cause in ("clean", "recycled") else log.warning
            level("worker %d (pid %d) exited: %s [%s] after %.3fs", w.index, pid, how, cause, lived)
            if not w.retiring and not self.stopping:
                self.pending_replacements += 1
            if cause == "boot" and not self.stopping:
                log.error("worker %d failed to boot; stopping instead of respawning forever "
                          "(fix the error above and start again)", w.index)
                self.exit_code = faults.EXIT_BOOT
                self._begin_stop("boot failure", fast=True)

    def _exit_cause(self, w: WorkerInfo, status: int, booted: bool) -> tuple[str, str]:
        if os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status)).name
            if w.aborted_at:
                return "timeout", f"killed by {sig} after --timeout {self.config.timeout:g}s"
            return ("clean" if w.retiring else "signal"), f"killed by {sig}"
        code = os.WEXITSTATUS(status)
        name = faults.EXIT_NAMES.get(code, "error")
        how = f"exit status {code} ({name})"
        if code == faults.EXIT_TIMEOUT or w.aborted_at:
            return "timeout", f"{how} after --timeout {self.config.timeout:g}s"
        if code == faults.EXIT_RECYCLED:
            return "recycled", f"{how}, --max-requests reached"
        if code == faults.EXIT_BOOT or not booted:
            return "boot", how
        if code == 0:
            return "clean", how
        return "crash", how

    def murder_workers(self) -> None:
        """Kill workers busy on one request for longer than --timeout: SIGABRT first, then SIGKILL."""
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.aborted_at:
                if not w.killed and now >= w.aborted_at + KILL_GRACE:
                    log.warning("worker %d (pid %d) ignored SIGABRT; SIGKILL", w.index, w.pid)
                    self._signal(w.pid, signal.SIGKILL)
                    w.killed = True
                continue
            busy = self.board.slots[w.slot].busy_since
            if self.config.timeout and busy and now - busy > self.config.timeout:
                log.warning("worker %d (pid %d) busy for %.2fs > --timeout %gs: SIGABRT", w.index, w.pid,
                            now - busy, self.config.timeout)
                w.aborted_at = now
                self._signal(w.pid, signal.SIGABRT)

    def manage_workers(self) -> None:
        """Bring the number of workers to the target: spawn what is missing, retire the surplus."""
        active = sorted((w for w in self.workers.values() if not w.retiring), key=lambda w: w.spawned)
        target = int(self.board.target_workers)
        for w in active[:max(0, len(active) - target)]:  # oldest first, as gunicorn does
            log.info("worker %d (pid %d) retiring: SIGTERM", w.index, w.pid)
            w.retiring = True
            self._signal(w.pid, signal.SIGTERM)
        used = {w.index for w in active}
        for _ in range(target - len(active)):
            index = next(i for i in range(MAX_WORKERS) if i not in used)
            used.add(index)
            self.spawn_worker(index)

    def spawn_worker(self, index: int) -> None:
        taken = {w.slot for w in self.workers.values()}
        slot_no = next(i for i in range(MAX_WORKERS) if i not in taken)
        slot = self.board.slots[slot_no]
        ctypes.memset(ctypes.addressof(slot), 0, ctypes.sizeof(Slot))
        slot.index = index
        pid = os.fork()
        if pid == 0:  # -- child --
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                os.close(self.wake_r)
                os.close(self.wake_w)
                slot.pid = os.getpid()
                self.runtime.worker_index = index
                worker = Worker(self.config, self.sock, self.runtime, slot)
                try:
                    worker.boot()
                except BaseException:
                    traceback.print_exc()
                    code = faults.EXIT_BOOT
                    return
                code = worker.run()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        slot.pid = pid  # also written by the child; whoever is first, stats see the worker at once
        self.workers[pid] = WorkerInfo(pid, index, slot_no, time.monotonic())
        self.board.spawns += 1
        if self.pending_replacements:
            self.pending_replacements -= 1
            self.board.respawns += 1
        log.info("worker %d spawned (pid %d)", index, pid)

    # -- signal handlers (called from the loop, never from the signal) -------------------------------------
    def handle_chld(self) -> None:
        pass  # reap_workers runs right after every wake-up

    def handle_ttin(self) -> None:
        if self.board.target_workers < MAX_WORKERS:
            self.board.target_workers += 1
        log.info("SIGTTIN: workers → %d", self.board.target_workers)

    def handle_ttou(self) -> None:
        if self.board.target_workers > 1:
            self.board.target_workers -= 1
        log.info("SIGTTOU: workers → %d", self.board.target_workers)

    def handle_hup(self) -> None:
        log.info("SIGHUP: replacing all %d workers", len(self.workers))
        for w in self.workers.values():
            if not w.retiring:
                w.retiring = True
                self._signal(w.pid, signal.SIGTERM)

    def handle_term(self) -> None:
        self._begin_stop("SIGTERM", fast=False)

    def handle_int(self) -> None:
        self._begin_stop("SIGINT", fast=True)

    def handle_quit(self) -> None:
        self._begin_stop("SIGQUIT", fast=True)

    def _begin_stop(self, why: str, fast: bool) -> None:
        if self.stopping and not fast:
            return
        if not self.stopping:
            self.stop_started = time.monotonic()
            in_flight = sum(self.board.slots[w.slot].in_flight for w in self.workers.values())
            log_shutdown_begin(why, in_flight, 0.0 if fast else self.config.graceful_timeout)
        self.stopping = True
        self.sock.close()  # stop accepting here; workers drop their copies as they leave
        grace = FAST_STOP_GRACE if fast else self.config.graceful_timeout
        self.stop_deadline = min(self.stop_deadline or float("inf"), time.monotonic() + grace)
        for w in self.workers.values():
            w.retiring = True
            self._signal(w.pid, signal.SIGINT if fast else signal.SIGTERM)

    def _force_stop(self) -> None:
        in_flight = sum(self.board.slots[w.slot].in_flight for w in self.workers.values())
        log_shutdown_end(False, in_flight, time.monotonic() - self.stop_started)
        for w in self.workers.values():
            self._signal(w.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.workers and time.monotonic() < deadline:
            self.reap_workers()
            time.sleep(0.01)
        self.stop_deadline = float("inf")
        self.workers.clear()

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def serve(config: Config) -> int:
    """Bind, fork the workers, supervise them until told to stop; return the exit status."""
    if config.workers > MAX_WORKERS:
        log.error("--workers %d: at most %d", config.workers, MAX_WORKERS)
        return faults.EXIT_CONFIG
    sock = make_listener(config)
    return Master(config, sock).run()
