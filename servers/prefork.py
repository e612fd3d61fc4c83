"""Prefork: a master process that never serves, and worker processes that each run one engine.

`prefork` (engine sync by default, or `--engine threads|loop|gevent`), `hybrid-threads` (engine threads) and
`hybrid-loop` (engine loop) are all this module: the master is the same for every engine, only what runs inside a
worker differs (the engines are registered in servers/__init__.py; each lives under servers/lifecycle.py).

# What each process owns
The **master** binds the listening socket, imports the whole application, then forks `--workers` children.
It creates no thread and no event loop before forking (a fork copies only the calling thread, and a loop's
state does not survive being copied); each child builds its own. After that the master only supervises:
it owns the list of workers, a shared-memory *board* (servers/board.py: an anonymous `mmap` created before
the first fork, so every child sees the same pages), and a self-pipe on which signals wake it up. Its
main loop is four named steps, as in gunicorn's arbiter:

    wait_for_signals → reap_workers → murder_workers → manage_workers

Signal handlers do no work: `signal.set_wakeup_fd` writes the signal number to the pipe so the `select`
in `wait_for_signals` returns at once (no EINTR games, no reentrancy); the loop calls `handle_<signame>`.

Each **worker** owns its own memory — its own copy of every module, every counter, every leak — and one
slot of the board, where it publishes its pid, what it accepted and answered, what it holds now, and its
liveness: `busy_since` (sync and threads: since when *every* handler thread is busy) or `heartbeat` (loop and
gevent: the last tick of a task that runs on the loop or hub itself). Any worker can answer `/_lab/stats` for
the whole server by reading the board.

# How a connection reaches a worker
By default all workers wait on the one listening socket inherited from the master. A sync worker waits in its
own epoll with EPOLLEXCLUSIVE, so Linux wakes one of them (rarely a few) per connection, idle ones in turn: no
thundering herd; the threads and loop engines wait in plain epoll, and all their idle workers wake for each
connection (one wins, the others find EAGAIN). Whoever asks first gets it: a busy worker does not ask, so a
shared socket balances by availability.

With `--reuseport` each worker index has its *own* listener on the same address (SO_REUSEPORT) and the kernel
hashes each new connection to one of them: no herd, an even spread by count — but blind to load. The master
makes every one of them (listening, before it forks the worker that serves it) and keeps its copy open, so a
listener outlives its worker: a worker that dies, hangs and is killed, recycles or is replaced by SIGHUP leaves
what its queue holds to its successor, which gets the same listener — nothing queued is reset. Only a worker
fewer (SIGTTOU, a scale down) closes a listener: that worker drains it (the master closed its own copy when it
told it to go), so the one window left is the microseconds between its last empty accept and its close — and
with `net.ipv4.tcp_migrate_req = 1` (Linux ≥ 5.14; per network namespace) the kernel hands even those to a
sibling. `/_lab/stats` and the start-up line say which. The honest cost that remains: a connection queued at a
worker's listener waits for *that* worker — behind a hung one until `--timeout` replaces it, behind a recycling
one until its replacement boots — where a shared socket would hand it to any idle sibling.

# How it fails
- **A crash** (`/fault/crash`, a segfault, `kill -9`) costs what that worker held: one request for sync,
  the in-flight requests and open connections of its threads, its loop or its greenlets — about 1/N of the
  server. The kernel delivers SIGCHLD, the master reaps the corpse, logs why it died and forks a replacement
  in a few milliseconds. The other workers never notice. Connections that arrive meanwhile wait in the backlog.
- **A hang**: once a worker's `busy_since` (sync: its request; threads: all its threads) or its loop's or
  hub's `heartbeat` is older than `--timeout`, the master sends SIGABRT (the worker exits at once with status
  89) and, if that is not enough within 0.15 s, SIGKILL; then it respawns. One hung thread of a threads worker
  is not a hung worker: the others still serve. A hung loop or gevent hub is: nothing else runs on it. Between
  the hang and the kill, the server has one worker fewer.
- **A slow client** holds a sync worker only as long as the connection policy allows (servers/sync.py lists
  the price of each wait), not forever — but N trickling clients do take N sync workers.
- **A leak** stays in the worker that leaked. `--max-requests N` (+ `--max-requests-jitter`, so workers do
  not all restart together) recycles workers and bounds it: a threads or loop worker counts requests over
  all its connections, stops accepting, finishes what it holds and exits with status 88.
- **A worker that cannot boot** (exits with status 3 before it is ready) stops the whole server with a
  clear error, instead of being respawned in a tight loop forever.
- **The master dying** takes every worker with it (`PR_SET_PDEATHSIG`), so no orphan keeps the port.

# Shutdown, reload, recycle: nothing already queued is lost
The listen queue is the trap: the kernel completes handshakes for connections nobody has accepted yet, the
clients send their requests, and when the last descriptor of the listener closes, every one of them is
reset (that is how gunicorn loses the requests queued at a SIGTERM). So:
- **SIGTERM** (stop): the master marks the board `stopping`, TERMs the workers and keeps *its* copy of the
  listener open. Each worker stops waiting for new connections, finishes what it holds (an accepted
  connection whose request has not arrived yet is held too: it is waited for, under the policy's
  deadline), then accepts non-blocking until the queue stays empty for 20 ms and serves what it finds —
  all within `--graceful-timeout`. The master closes the listener only after the last worker has left.
  (The queue lives while any copy of the listener is open: what saves the queued requests is the
  workers' drain; the master's copy only makes sure the queue never dies before the last worker looked.)
  The remaining window, honestly: a connection whose handshake completes after the last worker's last
  empty `accept()` and before the master's `close()` is reset. It was established after the signal
  (every worker drains after receiving it), so no request sent before the signal is lost; a client still
  connecting during the stop may be, as it would be refused a moment later anyway. Under load that never
  pauses, the drain keeps serving newcomers until `--graceful-timeout`, and then the force-kill costs
  what is in flight: stop sending traffic first (take the server out of the balancer), then TERM.
- **SIGHUP / SIGTTOU** (retire) and **`--max-requests`** (recycle): the listener stays open the whole time (the
  shared one, or the worker's own in the master's hands) and the replacements accept from the same queue, so
  the retiring worker only finishes what it holds and drains nothing away — except a worker fewer with
  `--reuseport`, whose listener closes after it (above). A HUP forks the new workers first and retires the
  old ones only once every new one has booted, so someone accepts throughout however slow a boot is. A
  recycle cannot wait like that (the worker leaves by itself): if every worker recycles at the same moment,
  the queue waits for the first replacement to boot — `--max-requests-jitter` spreads the recycles.
- A worker is forked with the master's signals *blocked*, and unblocks the stop signals once its lifecycle
  has its handlers: a TERM that reaches it while it boots waits for them — instead of hitting the master's
  inherited handler (which does nothing) and being lost until the force-kill, or ending the worker before it
  served what its queue holds.
- The log tells the truth: "shutdown: drained in …; bye" only when nothing was forced; after
  `--graceful-timeout` it says "forcing N in flight" and nothing more.

Inside a worker every engine takes the same TERM the same way (servers/lifecycle.py); the master's side —
the listeners kept open, `board.stopping`, the blocked signals, the honest log — is the same for all.

# Signals (to the master)
TERM graceful stop (workers finish what they hold and drain the queue, up to `--graceful-timeout`) · INT/QUIT fast stop ·
TTIN one worker more · TTOU one worker fewer · HUP replace every worker (the new ones first; the old retire once
they have booted) · CHLD a worker died. A worker takes the same TERM/INT/QUIT as its engine would alone.
"""

from __future__ import annotations

import ctypes
import gc
import os
import random
import select
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass

from webmodels.config import Config
from webmodels.exitcodes import EXIT_BOOT, EXIT_CONFIG, EXIT_NAMES, EXIT_RECYCLED, EXIT_TIMEOUT
from webmodels.listen import log_startup, make_listener
from webmodels.log import log

from . import engine_factory, lifecycle, preload
from .board import MAX_WORKERS, Board, BoardRuntime, Slot, clear, new_board
from .lifecycle import log_shutdown_begin, log_shutdown_end

MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"
KILL_GRACE = 0.15  # after SIGABRT, how long a hung worker gets before SIGKILL
FAST_STOP_GRACE = 1.0  # SIGINT/SIGQUIT: how long workers get before SIGKILL
REPLACED_POLL_S = 0.05  # after a HUP: how often the master looks whether the new workers have booted


# -- the worker --------------------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: an orphan lives on until it is told to stop
        pass


def worker_main(config: Config, sock: socket.socket, runtime: BoardRuntime, slot: Slot, index: int) -> int:
    """Boot a worker in the child after fork() and run its engine; return the status to os._exit() with.

    The master forked us with its signals blocked (see spawn_worker): a TERM sent to us while we boot waits,
    instead of reaching the master's inherited do-nothing handler and being lost — or ending us before we have
    served what the listen queue holds. The stop signals stay blocked until the lifecycle has its handlers
    (lifecycle.install_signals unblocks them): such a TERM is then a graceful stop like any other.
    """
    if config.faults and (delay := os.environ.get("WEBMODELS_FAULT_BOOT_DELAY")):
        time.sleep(float(delay))  # a slow boot, to test the window above (imports, a big app)
    for sig in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    # The master's verdict "you are hung": leave at once with a status that says so.
    signal.signal(signal.SIGABRT, lambda *_: os._exit(EXIT_TIMEOUT))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(Master.SIGNALS) - set(lifecycle.STOP_SIGNALS))
    _die_with_parent()
    if os.getppid() != runtime.board.master_pid:
        return 0  # the master died between fork and prctl
    try:
        random.seed()  # fork copied the master's RNG state: without this every worker draws the same numbers
        if config.faults and os.environ.get("WEBMODELS_FAULT_BOOT") == "1":
            raise RuntimeError("WEBMODELS_FAULT_BOOT=1: refusing to boot (the respawn-loop experiment)")
        max_requests = config.max_requests
        if max_requests and config.max_requests_jitter:
            max_requests += random.randint(0, config.max_requests_jitter)
        # Preloaded by the master (servers.preload) and shared copy-on-write — but for an engine that patches its
        # process when imported (gevent), whose module is the worker's own first import.
        factory = engine_factory(config.engine)
        runtime.attach(slot, index)
        slot.booted = 1
    except BaseException:
        traceback.print_exc()
        return EXIT_BOOT
    return lifecycle.run(factory, config, sock, runtime, max_requests=max_requests)


# -- the master --------------------------------------------------------------------------------------------------
@dataclass
class WorkerInfo:
    pid: int
    index: int
    slot: int
    spawned: float
    retiring: bool = False  # told to stop (TTOU, HUP, shutdown); no longer counts toward the target
    replaced: bool = False  # HUP: serves on until its replacements have booted; no longer counts toward the target
    aborted_at: float = 0.0  # when we sent SIGABRT for --timeout
    killed: bool = False


class Master:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
               signal.SIGCHLD)

    def __init__(self, config: Config, sock: socket.socket) -> None:
        self.config, self.sock = config, sock
        self.port = sock.getsockname()[1]
        # --reuseport: one listener per worker index, made and kept open here (see the essay); else the one.
        self.listeners: dict[int, socket.socket] = {0: sock} if config.reuseport else {}
        self.board: Board = new_board()
        self.board.master_pid = os.getpid()
        self.board.migrate_req = read_migrate_req()
        self.board.target_workers = config.workers
        self.runtime = BoardRuntime(config, self.board)
        self.workers: dict[int, WorkerInfo] = {}
        self.sig_queue: list[int] = []
        self.stopping = False
        self.stop_deadline = 0.0
        self.stop_started = 0.0
        self.forced = False  # the stop killed requests in flight: the log must not say "drained"
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
        detail = f"workers={self.config.workers} engine={self.config.engine}"
        if self.config.reuseport:
            detail += f" reuseport tcp_migrate_req={self.board.migrate_req}"
        # Every listener listens before the first fork: a client that connects on the word waits in a queue
        # for a worker to boot, it is never refused.
        log_startup(self.config, self.sock, detail=detail)
        if self.config.reuseport and self.board.migrate_req != 1:
            log.info("--reuseport: a worker removed by SIGTTOU (or the last one at a stop) resets what its "
                     "listener still queues; `sysctl -w net.ipv4.tcp_migrate_req=1` (root, per network "
                     "namespace) makes the kernel hand those to a sibling")
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
                    for sock in {self.sock, *self.listeners.values()}:
                        sock.close()  # only now: until the last worker left, its queue was still being served
                    if not self.forced:
                        log_shutdown_end(True, 0, time.monotonic() - self.stop_started)
                    return self.exit_code
                if time.monotonic() >= self.stop_deadline:
                    self._force_stop()
                continue
            self.manage_workers()
            self.close_unheld_listeners()  # after the replacements took theirs

    def _queue_signal(self, signum: int, frame: object) -> None:
        # No work here (no logging, no reaping). Python may call this once for two signals of the same
        # kind that arrived before it ran, so the queue is filled from the wakeup pipe instead: the C-level
        # handler writes one byte (the signal number) per delivery. The kernel itself still merges two
        # identical standard signals sent before the first was delivered — `kill -TTIN` twice in a row
        # may add one worker; send the second after the log line of the first.
        pass

    def _stuck_since(self, w: WorkerInfo) -> float:
        """Since when the worker has served nobody: all its runners busy, or its loop silent (0 = it serves)."""
        slot = self.board.slots[w.slot]
        return slot.busy_since or slot.heartbeat

    def _sleep_time(self) -> float:
        """Sleep until the nearest deadline: a stuck worker's --timeout, a pending SIGKILL, the drain end."""
        now = time.monotonic()
        wake = now + (min(1.0, self.config.timeout / 2) if self.config.timeout else 1.0)
        for w in self.workers.values():
            if w.aborted_at and not w.killed:
                wake = min(wake, w.aborted_at + KILL_GRACE)
            stuck = self._stuck_since(w)
            if self.config.timeout and stuck and not w.aborted_at:
                wake = min(wake, stuck + self.config.timeout)
        if self.stopping:
            wake = min(wake, self.stop_deadline)
        elif any(w.replaced and not w.retiring for w in self.workers.values()):
            wake = min(wake, now + REPLACED_POLL_S)  # a booted replacement does not wake us: look again soon
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
            clear(slot)
            lived = time.monotonic() - w.spawned
            level = log.info if cause in ("clean", "recycled") else log.warning
            level("worker %d (pid %d) exited: %s [%s] after %.3fs", w.index, pid, how, cause, lived)
            if not (w.retiring or w.replaced) and not self.stopping:
                self.pending_replacements += 1
            if cause == "boot" and not self.stopping:
                log.error("worker %d failed to boot; stopping instead of respawning forever "
                          "(fix the error above and start again)", w.index)
                self.exit_code = EXIT_BOOT
                self._begin_stop("boot failure", fast=True)

    def _exit_cause(self, w: WorkerInfo, status: int, booted: bool) -> tuple[str, str]:
        if os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status)).name
            if w.aborted_at:
                return "timeout", f"killed by {sig} after --timeout {self.config.timeout:g}s"
            return ("clean" if w.retiring else "signal"), f"killed by {sig}"
        code = os.WEXITSTATUS(status)
        name = EXIT_NAMES.get(code, "error")
        how = f"exit status {code} ({name})"
        if code == EXIT_TIMEOUT or w.aborted_at:
            return "timeout", f"{how} after --timeout {self.config.timeout:g}s"
        if code == EXIT_RECYCLED:
            return "recycled", f"{how}, --max-requests reached"
        if code == 0:  # (also a worker told to stop while it was still booting)
            return "clean", how
        if code == EXIT_BOOT or not booted:
            return "boot", how
        return "crash", how

    def murder_workers(self) -> None:
        """Kill workers stuck for longer than --timeout: SIGABRT first, then SIGKILL."""
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.aborted_at:
                if not w.killed and now >= w.aborted_at + KILL_GRACE:
                    log.warning("worker %d (pid %d) ignored SIGABRT; SIGKILL", w.index, w.pid)
                    self._signal(w.pid, signal.SIGKILL)
                    w.killed = True
                continue
            stuck = self._stuck_since(w)
            if self.config.timeout and stuck and now - stuck > self.config.timeout:
                slot = self.board.slots[w.slot]
                what = ("with its loop silent" if not slot.busy_since else "busy on one request" if slot.runners == 1
                        else f"with every thread busy ({slot.runners} of {slot.runners})")
                log.warning("worker %d (pid %d) %s for %.2fs > --timeout %gs: SIGABRT", w.index, w.pid, what,
                            now - stuck, self.config.timeout)
                w.aborted_at = now
                self._signal(w.pid, signal.SIGABRT)

    def active(self) -> list[WorkerInfo]:
        """The workers that count toward the target (not retiring, not replaced by a HUP), oldest first."""
        return sorted((w for w in self.workers.values() if not (w.retiring or w.replaced)), key=lambda w: w.spawned)

    def manage_workers(self) -> None:
        """Bring the number of workers to the target: spawn what is missing, retire the surplus and the replaced."""
        active = self.active()
        target = int(self.board.target_workers)
        for w in active[:max(0, len(active) - target)]:  # oldest first, as gunicorn does
            # A worker fewer: with --reuseport its listener goes with it. It serves what its queue holds, and ours
            # must not be the copy that outlives its last accept (the queue would be reset at our close, a window
            # ms long; at the worker's own close it is µs).
            self.retire(w, "retiring", closes_listener=self.config.reuseport)
        used = {w.index for w in active}
        for _ in range(target - len(active)):
            index = next(i for i in range(MAX_WORKERS) if i not in used)
            used.add(index)
            self.spawn_worker(index)
        replaced = [w for w in self.workers.values() if w.replaced and not w.retiring]
        if replaced and self.replacements_booted():
            for w in replaced:  # their successors serve the same listener(s): nothing is closed
                self.retire(w, "replaced (SIGHUP), its successor has booted; retiring")

    def replacements_booted(self) -> bool:
        """True once the target's worth of active workers have all booted (a HUP's old workers may go)."""
        active = self.active()
        return len(active) >= self.board.target_workers and all(self.board.slots[w.slot].booted for w in active)

    def retire(self, w: WorkerInfo, why: str, closes_listener: bool = False) -> None:
        """Tell worker W to stop gracefully (SIGTERM): it finishes what it holds; CLOSES_LISTENER: its own too."""
        log.info("worker %d (pid %d) %s: SIGTERM", w.index, w.pid, why)
        w.retiring = True
        if closes_listener:
            self.board.slots[w.slot].closing = 1
            sock = self.listeners.pop(w.index, None)
            if sock is not None:
                sock.close()
        self._signal(w.pid, signal.SIGTERM)

    def spawn_worker(self, index: int) -> None:
        taken = {w.slot for w in self.workers.values()}
        slot_no = next(i for i in range(MAX_WORKERS) if i not in taken)
        slot = self.board.slots[slot_no]
        clear(slot)
        slot.index = index
        listener = self.listener_for(index)
        # Signals wait while we fork: the child unblocks them once it has its own handlers (worker_main).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        pid = os.fork()
        if pid == 0:  # -- child --
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                os.close(self.wake_r)
                os.close(self.wake_w)
                for other in self.listeners.values():
                    if other is not listener:
                        other.close()  # else a sibling's listener would outlive the master's close of it
                slot.pid = os.getpid()
                code = worker_main(self.config, listener, self.runtime, slot, index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        slot.pid = pid  # also written by the child; whoever is first, stats see the worker at once
        self.workers[pid] = WorkerInfo(pid, index, slot_no, time.monotonic())
        self.board.spawns += 1
        if self.pending_replacements:
            self.pending_replacements -= 1
            self.board.respawns += 1
        log.info("worker %d spawned (pid %d)", index, pid)

    def listener_for(self, index: int) -> socket.socket:
        """The listener worker INDEX serves: the shared one, or (--reuseport) its own, made on first use."""
        if not self.config.reuseport:
            return self.sock
        sock = self.listeners.get(index)
        if sock is None:
            sock = self.listeners[index] = make_listener(self.config, port=self.port, reuseport=True)
        return sock

    def close_unheld_listeners(self) -> None:
        """--reuseport: close the listener of an index no worker (active or retiring) serves any more.

        Until then it stays open here, so a worker that dies, hangs, recycles or is replaced leaves its queue to
        its successor instead of resetting it. (The port stays held by the others: at least one worker is kept.)
        """
        if self.stopping:
            return  # closed together once the last worker has left
        held = {w.index for w in self.workers.values()}
        for index in [i for i in self.listeners if i not in held]:
            self.listeners.pop(index).close()

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
        # New workers first, the old ones retired once those have booted (manage_workers): the old keep
        # accepting meanwhile, so a reload leaves no moment with nobody accepting, however slow a boot is
        # (retiring them at once left the queue waiting for the boot: seconds on a busy machine, for ever
        # under HUPs closer together than a boot).
        old = [w for w in self.workers.values() if not (w.retiring or w.replaced)]
        log.info("SIGHUP: replacing all %d workers (the old retire once the new have booted)", len(old))
        for w in old:
            w.replaced = True

    def handle_term(self) -> None:
        self._begin_stop("SIGTERM", fast=False)

    def handle_int(self) -> None:
        self._begin_stop("SIGINT", fast=True)

    def handle_quit(self) -> None:
        self._begin_stop("SIGQUIT", fast=True)

    def _begin_stop(self, why: str, fast: bool) -> None:
        if self.stopping and not fast:
            return
        in_flight = sum(self.board.slots[w.slot].in_flight for w in self.workers.values())
        if not self.stopping:
            self.stop_started = time.monotonic()
            log_shutdown_begin(why, in_flight, 0.0 if fast else self.config.graceful_timeout)
        if fast and in_flight:
            self.forced = True
            log.warning("shutdown (%s): not waiting; forcing %d in flight", why, in_flight)
        self.stopping = True
        # The listener stays open: when its last copy closes, every connection queued in its backlog is reset
        # (requests clients have already sent). Workers drain that queue (board.stopping says this TERM is a
        # stop, not a retire); the master closes its copy once the last worker has left (run()).
        self.board.stopping = 1
        grace = FAST_STOP_GRACE if fast else self.config.graceful_timeout
        self.stop_deadline = min(self.stop_deadline or float("inf"), time.monotonic() + grace)
        for w in self.workers.values():
            w.retiring = True
            self._signal(w.pid, signal.SIGINT if fast else signal.SIGTERM)

    def _force_stop(self) -> None:
        in_flight = sum(self.board.slots[w.slot].in_flight for w in self.workers.values())
        self.forced = True
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


def read_migrate_req() -> int:
    """net.ipv4.tcp_migrate_req of this network namespace: 1 = Linux hands a closing listener's queue to a
    sibling; 0 = it resets it; -1 = unknown (not Linux ≥ 5.14)."""
    try:
        with open(MIGRATE_REQ) as f:
            return int(f.read().strip() or "-1")
    except (OSError, ValueError):
        return -1


def serve(config: Config) -> int:
    """Bind, fork the workers, supervise them until told to stop; return the exit status."""
    if config.workers > MAX_WORKERS:
        log.error("--workers %d: at most %d", config.workers, MAX_WORKERS)
        return EXIT_CONFIG
    preload(config.engine)
    sock = make_listener(config, reuseport=config.reuseport)
    return Master(config, sock).run()
