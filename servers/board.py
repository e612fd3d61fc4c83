"""The board: one page of shared memory where a master and its workers meet, and the runtime that uses it.

The master maps it (an anonymous `MAP_SHARED` mmap) before the first fork, so every worker sees the *same*
pages, never a disk: /tmp in a container can be an overlay on disk, and a slow write there means false
timeouts. The master writes the totals (target, spawns, exits, the counters of dead workers); each worker
writes only its own slot. Any worker answering `/_lab/stats` reads every slot: that is real inter-process
communication, through shared memory, without a message.

What a slot says about its worker: pid and index, what it has accepted and answered, what it holds now, and
the two facts the master judges liveness by — `busy_since` (all its handler threads busy since then) and
`heartbeat` (the loop's last tick). The threads of a threads worker write the same slot, so its runtime
updates it under a per-process lock (`Runtime.shared_by_threads`); readers in other processes may see a figure one update old,
never a torn one (each field is one aligned 8-byte word).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import time
from typing import Any

from webmodels.config import TICKING_ENGINES, Config
from webmodels.runtime import Runtime, loop_lag_ms, worker_entry

MAX_WORKERS = 64
EXIT_CAUSES = ("crash", "signal", "timeout", "recycled", "clean", "boot")


class Slot(ctypes.Structure):
    """One worker's corner of the board; only that worker writes it (the master zeroes it when it is reaped)."""
    _fields_ = [
        ("pid", ctypes.c_int64), ("index", ctypes.c_int64), ("booted", ctypes.c_int64),
        ("busy_since", ctypes.c_double),  # time.monotonic() since when every handler thread is busy; 0 = not
        ("heartbeat", ctypes.c_double),  # time.monotonic() of the loop's last tick; 0 = no loop here
        ("loop_lag_ms", ctypes.c_double),
        ("accepted", ctypes.c_int64), ("requests", ctypes.c_int64), ("in_flight", ctypes.c_int64),
        ("errors_4xx", ctypes.c_int64), ("errors_5xx", ctypes.c_int64),
        ("runners", ctypes.c_int64),  # its handler threads (0: it ticks instead)
        ("closing", ctypes.c_int64),  # 1: the master closes this worker's listener after it (--reuseport, TTOU)
    ]


class Board(ctypes.Structure):
    """Master-written totals plus one slot per possible worker."""
    _fields_ = [
        ("master_pid", ctypes.c_int64), ("target_workers", ctypes.c_int64), ("spawns", ctypes.c_int64),
        ("respawns", ctypes.c_int64),  # spawns that replaced a worker which died without being asked to
        ("stopping", ctypes.c_int64),  # 1 once the master stops the server (a TERM then means: drain the queue)
        ("migrate_req", ctypes.c_int64),  # net.ipv4.tcp_migrate_req at start (1, 0, or -1: unknown)
        *[(f"exits_{cause}", ctypes.c_int64) for cause in EXIT_CAUSES],
        # counters of workers that have died, folded in by the master when it reaps them
        ("retired_requests", ctypes.c_int64), ("retired_4xx", ctypes.c_int64), ("retired_5xx", ctypes.c_int64),
        ("slots", Slot * MAX_WORKERS),
    ]


def new_board() -> Board:
    buf = mmap.mmap(-1, ctypes.sizeof(Board), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    return Board.from_buffer(buf)


def clear(slot: Slot) -> None:
    ctypes.memset(ctypes.addressof(slot), 0, ctypes.sizeof(Slot))


class BoardRuntime(Runtime):
    """A worker's runtime: its counters live in its board slot, and it can read (and speak for) the server."""

    def __init__(self, config: Config, board: Board) -> None:
        super().__init__(config)
        self.board = board
        self.slot: Slot | None = None  # set in the worker after fork

    def attach(self, slot: Slot, index: int) -> None:
        self.slot, self.worker_index = slot, index

    @property
    def in_flight(self) -> int:
        """This worker's requests in flight (its slot; the server's sum is counters()["in_flight"])."""
        slot = getattr(self, "slot", None)
        return int(slot.in_flight) if slot is not None else 0

    @in_flight.setter
    def in_flight(self, n: int) -> None:
        pass  # counted in the slot (_started/_finished)

    @property
    def runners(self) -> int:
        return self._runners

    @runners.setter
    def runners(self, n: int) -> None:
        self._runners = n
        slot = getattr(self, "slot", None)
        if slot is not None:
            slot.runners = n

    # -- where the counts are kept: this worker's slot ----------------------------------------------------------
    def _started(self) -> None:
        slot = self.slot
        n = slot.in_flight = slot.in_flight + 1  # type: ignore[union-attr]
        if n == self.runners:
            slot.busy_since = time.monotonic()  # type: ignore[union-attr]

    def _finished(self, status: int, started: bool) -> None:
        slot = self.slot
        if started:
            slot.in_flight -= 1  # type: ignore[union-attr]
            slot.busy_since = 0.0  # type: ignore[union-attr]
        slot.requests += 1  # type: ignore[union-attr]
        if 400 <= status < 500:
            slot.errors_4xx += 1  # type: ignore[union-attr]
        elif status >= 500:
            slot.errors_5xx += 1  # type: ignore[union-attr]

    def _accepted(self) -> None:
        self.slot.accepted += 1  # type: ignore[union-attr]

    def heartbeat(self, now: float, lag_ms: float) -> None:
        slot = self.slot
        slot.heartbeat, slot.loop_lag_ms = now, lag_ms  # type: ignore[union-attr]

    # -- read by the lifecycle and the handler: the whole server ---------------------------------------------
    def listener_closing(self) -> bool:
        """Will our listener close with us? When the master stops the server, or closes our own (--reuseport,
        a worker fewer) — not on a retire or recycle, where a sibling or our replacement accepts from it."""
        return bool(self.board.stopping or (self.slot is not None and self.slot.closing))

    def requests_here(self) -> int:
        return self.slot.requests if self.slot else 0

    def live_slots(self) -> list[Slot]:
        return [s for s in self.board.slots if s.pid]

    def per_worker(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{**worker_entry(int(s.pid), int(s.index), self.engine, int(s.accepted), int(s.requests),
                                int(s.in_flight), s.heartbeat or now, s.loop_lag_ms), "booted": bool(s.booted)}
                for s in sorted(self.live_slots(), key=lambda s: s.index)]

    def counters(self) -> dict[str, Any]:
        b, live = self.board, self.live_slots()
        now = time.monotonic()
        lags = [loop_lag_ms(s.heartbeat, s.loop_lag_ms, now) for s in live if s.heartbeat]
        return {
            "requests": b.retired_requests + sum(s.requests for s in live),
            "in_flight": sum(s.in_flight for s in live),
            "errors_4xx": b.retired_4xx + sum(s.errors_4xx for s in live),
            "errors_5xx": b.retired_5xx + sum(s.errors_5xx for s in live),
            "workers": len(live),
            "target_workers": b.target_workers,
            "busy_workers": sum(1 for s in live if s.in_flight),
            # one handler per thread: running handlers = busy threads (the loop has none to count)
            "busy_threads": 0 if self.engine in TICKING_ENGINES else sum(s.in_flight for s in live),
            "loop_lag_ms": max(lags, default=0.0),
            "worker_spawns": b.spawns,
            "worker_exits": {cause: getattr(b, f"exits_{cause}") for cause in EXIT_CAUSES},
            "respawns": b.respawns,
            **({"reuseport": reuseport_facts(int(b.migrate_req))} if self.config.reuseport else {}),
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


def reuseport_facts(migrate_req: int) -> dict[str, Any]:
    """What /_lab/stats says about --reuseport's one window: a listener closing over its queue."""
    closed = migrate_req == 1
    return {"listeners": "one per worker, held by the master (a dying, hung, recycled or replaced worker leaves "
                         "its queue to its successor)",
            "tcp_migrate_req": migrate_req,
            "scale_down_window": "closed: the kernel hands a closing listener's queue to a sibling" if closed else
            "open: a worker removed by SIGTTOU resets what reached its listener after its last accept "
            "(sysctl -w net.ipv4.tcp_migrate_req=1 closes it)"}
