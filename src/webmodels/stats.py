"""`/_lab/stats`: what the server's processes cost, measured from outside with psutil.

Memory is summed over the whole process tree. RSS counts every shared copy-on-write page once per process,
so it overstates prefork; USS (pages only this process has) and PSS (shared pages split between their
sharers) are reported beside it. Reading USS/PSS parses /proc/PID/smaps_rollup: a few hundred µs per
process, paid by whichever thread or worker answers the route (the event loop pays it on its one thread).
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import psutil

from .runtime import Runtime

_procs: dict[int, psutil.Process] = {}  # kept so cpu_percent measures since this process's last sample


def _process(pid: int) -> psutil.Process:
    proc = _procs.get(pid)
    if proc is None:
        proc = _procs[pid] = psutil.Process(pid)
    return proc


def _open_sockets(pid: int) -> int:
    """Count socket fds: client connections plus the listener (and the pool's wake-up pair).

    Not psutil's net_connections(): it parses all of /proc/net/tcp, which after a prefork run holds
    thousands of TIME_WAIT entries — 70 ms measured here, long enough to show up as event-loop lag.
    """
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                continue
    except OSError:
        return -1
    return n


class CtxSwitches(NamedTuple):
    voluntary: int
    involuntary: int


def _ctx_switches(pid: int) -> CtxSwitches | None:
    """Sum context switches over every thread of PID.

    psutil reads /proc/PID/status, whose counters belong to the main thread only: a thread pool's
    switches would be invisible there. /proc/PID/task/*/status has one set per thread.
    """
    vol = invol = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith(b"nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended while we read
    return CtxSwitches(vol, invol)


def process_info(pid: int, role: str) -> dict[str, Any] | None:
    """Return one process's figures, or None if it is gone."""
    try:
        proc = _process(pid)
        with proc.oneshot():
            mem = proc.memory_full_info()
            ctx = _ctx_switches(pid) or proc.num_ctx_switches()
            conns = _open_sockets(pid)
            return {
                "pid": pid, "ppid": proc.ppid(), "role": role, "threads": proc.num_threads(),
                "rss": mem.rss, "uss": mem.uss, "pss": getattr(mem, "pss", mem.uss),
                "cpu_percent": proc.cpu_percent(None),
                "cpu_seconds": round(sum(proc.cpu_times()[:2]), 3),
                "ctx_switches": {"voluntary": ctx.voluntary, "involuntary": ctx.involuntary},
                "open_fds": proc.num_fds(), "connections": conns,
            }
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        _procs.pop(pid, None)
        return None


def snapshot(runtime: Runtime) -> dict[str, Any]:
    """Build the /_lab/stats document for RUNTIME's server."""
    procs = []
    for pid, role in sorted(runtime.process_roles().items()):
        info = process_info(pid, role)
        if info is not None:
            procs.append(info)
    for gone in set(_procs) - {p["pid"] for p in procs}:
        _procs.pop(gone, None)
    totals = {k: sum(p[k] for p in procs) for k in ("rss", "uss", "pss")}
    totals["threads"] = sum(p["threads"] for p in procs)
    totals["processes"] = len(procs)
    totals["ctx_voluntary"] = sum(p["ctx_switches"]["voluntary"] for p in procs)
    totals["ctx_involuntary"] = sum(p["ctx_switches"]["involuntary"] for p in procs)
    totals["cpu_seconds"] = round(sum(p["cpu_seconds"] for p in procs), 3)
    return {
        "model": runtime.model,
        "engine": runtime.engine,
        "config": runtime.config.effective(),
        "pid": runtime.server_pid(),
        "answered_by": os.getpid(),
        "started_at": runtime.started_at,
        "uptime_s": round(time.monotonic() - runtime.started_mono, 3),
        "processes": procs,
        "totals": totals,
        "counters": runtime.counters(),
        # one row per serving process (each worker of a master model; the process itself otherwise)
        "per_worker": runtime.per_worker(),
        # set by the native lab supervisor (`webmodels up`, through WEBMODELS_RESTARTS) when it restarts the server
        "restarts": runtime.config.restarts,
    }
