"""The scenarios: one function per row of the processes-vs-threads table.

Each scenario starts the servers it needs (fresh, so one scenario's leaks, hangs and crashes never leak into
the next), runs Locust, samples `/_lab/stats`, and returns a plain dict: `raw` (every figure it measured)
and `summary` (the few numbers the report prints and the test checks). The report reads only these dicts.

Two ways of sharing the machine, stated in the report:
- *side by side*: the three servers run at once on the server core and one Locust run loads all three (the
  locustfile's three user classes, equal users each). Used where the server mostly waits (I/O, faults,
  hangs, leaks, the counter race), so sharing one core changes little and the comparison is simultaneous.
- *alone*: one model at a time owns the server core (the ceiling, context switches, the thread sweep) or
  every core (multi-core).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from . import locustrun
from .locustrun import LocustRun
from .runner import BenchServer, Pinning, Progress, RemoteServer, StatsSampler, get_stats, taskset

MODELS = ("threadpool", "prefork", "eventloop")
LOCUST_OVERHEAD_S = 1.5  # start-up and shutdown of one Locust subprocess, for the progress estimate
SERVER_START_S = 0.4


@dataclass
class Plan:
    """Knobs of one bench run; `quick` shrinks durations, repetitions and sweeps to about a minute."""

    quick: bool = False
    duration: float | None = None  # seconds per load step (None: 2 quick, 6 default)
    models: tuple[str, ...] = MODELS
    targets: str = "native"  # native | compose
    compose_urls: dict[str, str] = field(default_factory=dict)

    @property
    def step(self) -> float:
        return self.duration or (2.0 if self.quick else 6.0)

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


class Bench:
    """Shared context of the scenarios: the plan, the pinning, the progress bar, the work directory."""

    def __init__(self, plan: Plan, pin: Pinning, progress: Progress, workdir: Path) -> None:
        self.plan, self.pin, self.progress, self.workdir = plan, pin, progress, workdir
        self.runs = 0

    @property
    def native(self) -> bool:
        return self.plan.targets == "native"

    def server(self, model: str, flags: list[str] | None = None, *, restart: bool = False,
               cpus: tuple[int, ...] | None = None) -> BenchServer | RemoteServer:
        if not self.native:
            return RemoteServer(model, self.plan.compose_urls[model])
        return BenchServer(model, flags, cpus=cpus or self.pin.server, restart=restart)

    def locust(self, targets: dict[str, str], users_each: int, duration: float, workload: str,
               label: str, **options: Any) -> dict[str, Any]:
        self.runs += 1
        self.progress.step(label, duration + LOCUST_OVERHEAD_S)
        spec = LocustRun(targets=targets, users=users_each * len(targets), duration=duration, workload=workload,
                         options={k: v for k, v in options.items() if v is not None})
        return locustrun.run(spec, cpus=self.pin.locust, workdir=self.workdir / f"run{self.runs:03d}")


# -- helpers ------------------------------------------------------------------------------------------------
def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def rng(xs: list[float]) -> list[float] | None:
    xs = [x for x in xs if x is not None]
    return [round(min(xs), 3), round(max(xs), 3)] if xs else None


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope: the cost of one more worker / thread."""
    if len(xs) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


def start_all(servers: dict[str, Any]) -> None:
    """Start servers concurrently (each start is mostly Python's import time)."""
    errors: list[BaseException] = []

    def go(s: Any) -> None:
        try:
            s.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised below with the others stopped
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in servers.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        stop_all(servers)
        raise errors[0]


def stop_all(servers: dict[str, Any]) -> None:
    for s in servers.values():
        s.stop()


def accounting_rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per server: Locust's own request count beside the locustfile's ok / expected / collateral."""
    rows = {}
    for model, acc in (result.get("accounting") or {}).items():
        locust_count = sum(s["requests"] for n, s in result["stats"].items() if n.startswith(model + " "))
        rows[model] = {k: acc.get(k) for k in ("requests", "ok", "expected", "collateral", "injected",
                                                "downtime_ms", "recovery_ms", "recoveries_ms", "down_at_end",
                                                "unrecovered", "errors")}
        rows[model]["locust_requests"] = locust_count
        rows[model]["balanced"] = (acc.get("ok", 0) + acc.get("expected", 0) + acc.get("collateral", 0)
                                   == acc.get("requests", -1) == locust_count)
    return rows


def memory_of(stats: dict[str, Any] | None) -> dict[str, int] | None:
    if not stats:
        return None
    t = stats["totals"]
    return {"rss": t["rss"], "uss": t["uss"], "pss": t["pss"], "processes": t["processes"], "threads": t["threads"]}


def time_stats_route(url: str, n: int) -> list[float]:
    """Milliseconds per GET /_lab/stats (psutil over the tree + the counters: for prefork, the shared board)."""
    out = []
    with httpx.Client(timeout=5) as c:
        for _ in range(n):
            t = time.perf_counter()
            c.get(f"{url}/_lab/stats")
            out.append((time.perf_counter() - t) * 1000)
    return out


def peak(samples: list[dict[str, Any]], key: str) -> int | None:
    vals = [s["totals"][key] for s in samples if s.get("up") and s.get("totals")]
    return max(vals) if vals else None


def series(samples: list[dict[str, Any]], key: str, *path: str) -> list[list[float]]:
    """[[t, value], ...] for a totals key (or a counters path) of a sampler's samples."""
    out = []
    for s in samples:
        if not s.get("up"):
            continue
        v: Any = s.get(key)
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            out.append([s["t"], v])
    return out


def tree_ctx(stats: dict[str, Any] | None) -> dict[str, int] | None:
    """Context switches of every thread of every process in the tree, from /proc/PID/task/*/status.

    psutil's num_ctx_switches() (and so /_lab/stats) reads /proc/PID/status, which counts the main thread
    only: a thread pool's workers would be invisible. Same kernel only (native targets).
    """
    if not stats:
        return None
    vol = invol = 0
    for proc in stats.get("processes", []):
        try:
            tasks = os.listdir(f"/proc/{proc['pid']}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{proc['pid']}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            invol += int(line.split()[1])
            except OSError:
                continue
    return {"voluntary": vol, "involuntary": invol}


def native_only(bench: Bench, name: str) -> dict[str, Any] | None:
    if bench.native:
        return None
    return {"skipped": f"{name} needs servers started with special flags or signals; run with --targets native",
            "raw": {}, "summary": {}}


# -- memory ---------------------------------------------------------------------------------------------------
def memory(bench: Bench) -> dict[str, Any]:
    """Idle memory of each model and configuration (RSS vs USS vs PSS), plus the /_lab/stats cost."""
    if (skip := native_only(bench, "the memory sweep")):
        return skip
    p = bench.plan
    workers = p.pick([1, 4], [1, 2, 4, 8])
    threads = p.pick([8, 256], [8, 32, 128, 256])
    configs: list[tuple[str, str, list[str], dict[str, Any]]] = []
    if "prefork" in p.models:
        for freeze in (False, True):
            for w in workers:
                configs.append(("prefork", f"prefork w={w}{' freeze' if freeze else ''}",
                                ["--workers", str(w)] + (["--gc-freeze"] if freeze else []),
                                {"workers": w, "gc_freeze": freeze}))
    if "threadpool" in p.models:
        for t in threads:
            configs.append(("threadpool", f"threadpool t={t}", ["--threads", str(t)], {"threads": t}))
    if "eventloop" in p.models:
        configs.append(("eventloop", "eventloop", [], {}))
    rows = []
    reps = p.pick(2, 5)
    for model, label, flags, params in configs:
        bench.progress.step(f"memory · {label} (idle)", SERVER_START_S + 0.6)
        with bench.server(model, flags) as srv:
            time.sleep(0.3)  # let workers finish booting and threads reach their first wait
            samples = []
            for _ in range(reps):
                samples.append(memory_of(get_stats(srv.url)))
                time.sleep(0.05)
            samples = [s for s in samples if s]
            timing = time_stats_route(srv.url, p.pick(10, 30))
        row = {"model": model, "label": label, **params,
               **{k: int(statistics.median(s[k] for s in samples)) for k in ("rss", "uss", "pss")},
               "processes": samples[-1]["processes"], "threads_total": samples[-1]["threads"],
               "stats_ms_median": med(timing), "stats_ms_range": rng(timing), "samples": samples}
        rows.append(row)
    summary: dict[str, Any] = {}
    for freeze in (False, True):
        pre = [r for r in rows if r["model"] == "prefork" and r["gc_freeze"] == freeze]
        if pre:
            key = "prefork_freeze" if freeze else "prefork"
            summary[f"{key}_pss_per_worker_mb"] = _mb(slope([r["workers"] for r in pre], [r["pss"] for r in pre]))
            summary[f"{key}_rss_per_worker_mb"] = _mb(slope([r["workers"] for r in pre], [r["rss"] for r in pre]))
            summary[f"{key}_uss_per_worker_mb"] = _mb(slope([r["workers"] for r in pre], [r["uss"] for r in pre]))
            biggest = max(pre, key=lambda r: r["workers"])
            summary[f"{key}_rss_over_pss_at_{biggest['workers']}"] = round(biggest["rss"] / biggest["pss"], 2)
    tp = [r for r in rows if r["model"] == "threadpool"]
    if tp:
        summary["threadpool_rss_per_thread_kb"] = _kb(slope([r["threads"] for r in tp], [r["rss"] for r in tp]))
        summary["threadpool_pss_per_thread_kb"] = _kb(slope([r["threads"] for r in tp], [r["pss"] for r in tp]))
    for r in rows:
        if r["label"] in ("prefork w=4", "threadpool t=256", "eventloop", "prefork w=8", "threadpool t=32"):
            summary[f"pss_mb {r['label']}"] = _mb(r["pss"])
    summary["stats_route_ms"] = {r["label"]: r["stats_ms_median"] for r in rows}
    return {"raw": {"rows": rows, "repetitions": reps}, "summary": summary}


def _mb(b: float | None) -> float | None:
    return None if b is None else round(b / 2**20, 2)


def _kb(b: float | None) -> float | None:
    return None if b is None else round(b / 2**10, 1)


# -- side-by-side load with sampling -----------------------------------------------------------------------
def side_by_side(bench: Bench, label: str, flags: dict[str, list[str]], users_each: int, duration: float,
                 workload: str, *, restart: bool = False, models: tuple[str, ...] | None = None,
                 interval: float = 0.25, **options: Any) -> dict[str, Any]:
    """Start the models' servers, run one Locust run against all of them while sampling, stop them."""
    models = models or bench.plan.models
    servers = {m: bench.server(m, flags.get(m), restart=restart) for m in models}
    start_all(servers)
    try:
        with StatsSampler({m: s.url for m, s in servers.items()}, interval=interval) as sampler:
            result = bench.locust({m: s.url for m, s in servers.items()}, users_each, duration, workload, label,
                                  **options)
        final = {m: get_stats(s.url) for m, s in servers.items()}
    finally:
        stop_all(servers)
    result["samples"] = sampler.samples
    result["sampler_t0"] = sampler.t0
    result["restarts"] = {m: s.deaths for m, s in servers.items()}
    result["final_stats"] = {m: (None if d is None else {"counters": d["counters"], "totals": d["totals"]})
                             for m, d in final.items()}
    result["server_flags"] = {m: flags.get(m, []) for m in models}
    result["accounting_rows"] = accounting_rows(result)
    return result


# -- fault isolation ------------------------------------------------------------------------------------------
def faults(bench: Bench) -> dict[str, Any]:
    """Crash and segfault under steady /io load, repeated; servers restarted on exit like Docker would."""
    p = bench.plan
    users = p.pick(8, 12)
    duration = p.pick(4.0, max(3 * p.step, 10.0))
    every = p.pick(1.3, 2.5)
    reps = {"crash": p.pick(1, 3), "segfault": p.pick(1, 2)}
    runs: dict[str, list[dict[str, Any]]] = {}
    for fault, n in reps.items():
        for i in range(n):
            runs.setdefault(fault, []).append(side_by_side(
                bench, f"faults · {fault} run {i + 1}/{n} · all models", {}, users, duration, "io",
                restart=bench.native, io_ms=50, fault=fault, fault_every=every))
    summary: dict[str, Any] = {"users_per_server": users, "io_ms": 50, "fault_every_s": every}
    for fault, rs in runs.items():
        for m in p.models:
            rows = [r["accounting_rows"].get(m) for r in rs if r["accounting_rows"].get(m)]
            per_inj = [r["collateral"] / r["injected"] for r in rows if r.get("injected")]
            recov = [x for r in rows for x in (r.get("recoveries_ms") or [])]
            restart_ms = [d["restart_ms"] for r in rs for d in r["restarts"].get(m, []) if d.get("restart_ms")]
            summary[f"{fault} {m}"] = {
                "collateral": sum(r["collateral"] for r in rows), "injected": sum(r["injected"] or 0 for r in rows),
                "collateral_per_fault_median": med(per_inj), "collateral_per_fault_range": rng(per_inj),
                "downtime_ms_median": med([r["downtime_ms"] for r in rows]),
                "downtime_ms_range": rng([r["downtime_ms"] for r in rows]),
                "recovery_ms_median": med(recov), "recovery_ms_range": rng(recov),
                "process_restart_ms_median": med(restart_ms), "server_restarts": len(restart_ms),
                "runs": len(rows), "deaths_seen_by_server": _deaths(rs, m),
            }
    summary["theory"] = {"prefork": 0, "threadpool": f"≈ in flight at the crash (≈ {users} users) + refused "
                         "while restarting", "eventloop": f"≈ in flight at the crash (≈ {users} users) + refused "
                         "while restarting"}
    return {"raw": {"runs": runs, "repetitions": reps}, "summary": summary}


def _deaths(runs: list[dict[str, Any]], model: str) -> int:
    """Processes that died, as the servers saw it: prefork's master counts its workers' exits; for the
    single-process models, the bench's restarts. Compared with `injected`, it shows whether every injected
    fault hit exactly once."""
    if model == "prefork":
        total = 0
        for r in runs:
            exits = ((r["final_stats"].get(model) or {}).get("counters") or {}).get("worker_exits") or {}
            total += sum(v for k, v in exits.items() if k in ("crash", "signal"))
        return total
    return sum(len(r["restarts"].get(model, [])) for r in runs)


# -- hung work ---------------------------------------------------------------------------------------------
def hang(bench: Bench) -> dict[str, Any]:
    """/fault/hang under /io load: prefork kills after --timeout, the pool leaks a thread, the loop stalls."""
    p = bench.plan
    users = p.pick(6, 10)
    duration = p.pick(4.0, max(2 * p.step, 12.0))
    every = p.pick(1.2, 2.0)
    timeout = p.pick(1.0, 2.0)
    hang_s = int(duration + 30)  # longer than the run: a hang that never ends by itself
    flags = {"prefork": ["--timeout", str(timeout)], "threadpool": ["--threads", "8", "--queue", "64"]}
    runs = {"plain": side_by_side(bench, "hang · all models", flags, users, duration, "io", io_ms=50,
                                  fault="hang", fault_every=every, hang_s=hang_s)}
    if "eventloop" in p.models and bench.native:
        runs["watchdog"] = side_by_side(
            bench, "hang · eventloop --watchdog (restarted on exit)", {"eventloop": ["--watchdog", "1"]}, users,
            duration, "io", restart=True, models=("eventloop",), io_ms=50, fault="hang", fault_every=every,
            hang_s=hang_s)
    summary: dict[str, Any] = {"users_per_server": users, "fault_every_s": every, "prefork_timeout_s": timeout,
                               "threadpool_threads": 8, "hang_s": hang_s}
    plain = runs["plain"]
    for m in p.models:
        acc = plain["accounting_rows"].get(m, {})
        samples = plain["samples"].get(m, [])
        up = [s for s in samples if s.get("up")]
        ok_series = _ok_rate(plain, m)
        entry = {"ok": acc.get("ok"), "collateral": acc.get("collateral"), "injected": acc.get("injected"),
                 "stats_unanswered_s": _unanswered_s(samples),
                 "ok_per_s_first_second": ok_series[1][1] if len(ok_series) > 1 else None,
                 "ok_per_s_last_second": ok_series[-2][1] if len(ok_series) > 1 else None}
        fin = (plain["final_stats"].get(m) or {}).get("counters", {})
        if m == "threadpool":
            entry["busy_threads_max"] = max((s["counters"].get("busy_threads", 0) for s in up), default=None)
            entry["pool_size"] = 8
        if m == "prefork":
            entry["timeout_kills"] = (fin.get("worker_exits") or {}).get("timeout")
            entry["workers_at_end"] = fin.get("workers")
        if m == "eventloop":
            entry["loop_lag_max_ms"] = max((s["counters"].get("loop_lag_max_ms", 0) for s in up), default=None)
        summary[m] = entry
    if "watchdog" in runs:
        w = runs["watchdog"]
        acc = w["accounting_rows"].get("eventloop", {})
        summary["eventloop --watchdog 1"] = {
            "ok": acc.get("ok"), "collateral": acc.get("collateral"), "injected": acc.get("injected"),
            "restarts": len(w["restarts"].get("eventloop", [])), "recovery_ms_median": med(acc.get("recoveries_ms") or []),
            "ok_per_s_last_second": (_ok_rate(w, "eventloop") or [[0, None]] * 2)[-2][1]}
    return {"raw": {"runs": runs}, "summary": summary}


def _ok_rate(result: dict[str, Any], model: str) -> list[list[float]]:
    """[[second of the run, successful user requests completed in it], ...] from Locust's own counters."""
    reqs: dict[int, int] = {}
    t0 = int(result["started_at"])
    for name, row in result["stats"].items():
        if not name.startswith(model + " ") or "/fault/" in name:
            continue
        for sec, n in row.get("per_s", []):
            reqs[sec] = reqs.get(sec, 0) + n
        for sec, n in row.get("fail_per_s", []):
            reqs[sec] = reqs.get(sec, 0) - n
    if not reqs:
        return []
    last = t0 + int(round(result["duration_s"])) + 1
    return [[sec - t0, reqs.get(sec, 0)] for sec in range(t0, last)]


def _unanswered_s(samples: list[dict[str, Any]]) -> float:
    """Seconds during which /_lab/stats did not answer (each failed poll blocks the sampler up to its timeout)."""
    total = 0.0
    for a, b in zip(samples, samples[1:]):
        if not a.get("up"):
            total += b["t"] - a["t"]
    return round(total, 2)


# -- leaks -----------------------------------------------------------------------------------------------------
def leak(bench: Bench) -> dict[str, Any]:
    """A /fault/leak stream: memory over time per model; prefork --max-requests bounds it."""
    p = bench.plan
    users = p.pick(4, 6)
    duration = p.pick(3.0, max(2 * p.step, 12.0))
    every = p.pick(0.2, 0.4)
    mb = p.pick(4, 8)
    runs = {"plain": side_by_side(bench, "leak · all models", {}, users, duration, "io", io_ms=5,
                                  fault="leak", fault_every=every, leak_mb=mb)}
    if "prefork" in p.models and bench.native:
        runs["recycled"] = side_by_side(
            bench, "leak · prefork --max-requests", {"prefork": ["--max-requests", str(p.pick(150, 300)),
                                                                 "--max-requests-jitter", "50"]},
            users, duration, "io", models=("prefork",), io_ms=5, fault="leak", fault_every=every, leak_mb=mb)
    summary: dict[str, Any] = {"leak_mb_each": mb, "fault_every_s": every}
    for name, r in runs.items():
        for m, samples in r["samples"].items():
            key = m if name == "plain" else f"{m} --max-requests"
            uss = series(samples, "totals", "uss")
            summary[key] = {"uss_start_mb": _mb(uss[0][1]) if uss else None,
                            "uss_end_mb": _mb(uss[-1][1]) if uss else None,
                            "uss_peak_mb": _mb(max(v for _, v in uss)) if uss else None,
                            "leaked_mb": round(((r["accounting_rows"].get(m) or {}).get("injected") or 0) * mb, 1)}
            fin = (r["final_stats"].get(m) or {}).get("counters", {})
            if m == "prefork":
                summary[key]["recycled"] = (fin.get("worker_exits") or {}).get("recycled")
    return {"raw": {"runs": runs}, "summary": summary}


# -- communication ---------------------------------------------------------------------------------------------
def communication(bench: Bench) -> dict[str, Any]:
    """/counter unsafe vs locked: lost updates per model; what reading prefork's counters costs."""
    p = bench.plan
    users = p.pick(8, 16)
    models = p.models
    servers = {m: bench.server(m) for m in models}
    start_all(servers)
    try:
        for s in servers.values():  # compose servers keep their counters between runs: start from zero
            for mode in ("unsafe", "locked"):
                for _ in range(32 if s.__class__ is RemoteServer else 1):
                    httpx.get(f"{s.url}/counter?mode={mode}&op=reset", timeout=5)
        result = bench.locust({m: s.url for m, s in servers.items()}, users, p.step, "counter",
                              "communication · /counter unsafe+locked · all models")
        bench.progress.step("communication · reading the counters back", 1.0)
        finals = {m: _read_counters(s.url, m) for m, s in servers.items()}
    finally:
        stop_all(servers)
    summary: dict[str, Any] = {"users_per_server": users}
    for m in models:
        for mode in ("unsafe", "locked"):
            sent = (result["stats"].get(f"{m} /counter {mode}") or {})
            ok = sent.get("requests", 0) - sent.get("failures", 0)
            got = finals[m][mode]["total"]
            # Locust abandons its in-flight requests at stop (up to one per user) that the server still counts,
            # so the counter can exceed Locust's successes by that much: lost updates are clipped at 0.
            lost = max(0, ok - got) if got is not None else None
            summary[f"{m} {mode}"] = {"increments_ok": ok, "counter_total": got, "lost": lost,
                                      "lost_pct": round(100 * lost / ok, 1) if ok and lost is not None else None,
                                      "processes": len(finals[m][mode]["per_pid"]),
                                      "largest_single_counter": finals[m][mode]["max"]}
    result["accounting_rows"] = accounting_rows(result)
    return {"raw": {"run": result, "finals": finals}, "summary": summary}


def _read_counters(url: str, model: str) -> dict[str, Any]:
    """Read every process's counters (op=read); prefork needs fresh connections until each worker answered."""
    out: dict[str, Any] = {}
    workers = set((get_stats(url) or {}).get("processes", []) and
                  [p["pid"] for p in get_stats(url)["processes"] if p["role"] in ("worker", "main")])
    for mode in ("unsafe", "locked"):
        per_pid: dict[int, int] = {}
        for _ in range(400 if model == "prefork" else 1):
            r = httpx.get(f"{url}/counter?mode={mode}&op=read", headers={"Connection": "close"}, timeout=5).json()
            per_pid[r["pid"]] = r["value"]
            if not workers or workers <= set(per_pid):
                break
        complete = not workers or workers <= set(per_pid)
        out[mode] = {"per_pid": {str(k): v for k, v in per_pid.items()},
                     "total": sum(per_pid.values()) if complete else None,
                     "max": max(per_pid.values()) if per_pid else None, "complete": complete}
    return out


# -- creation overhead -----------------------------------------------------------------------------------------
CREATION_SNIPPET = r"""
import asyncio, json, os, sys, threading, time
import webmodels.app  # the same imports a server has, so fork copies a realistic process
n = int(sys.argv[1])
def thread_ms():
    ev = threading.Event(); t0 = time.perf_counter()
    t = threading.Thread(target=ev.set); t.start(); ev.wait(); dt = time.perf_counter() - t0; t.join(); return dt * 1e3
def fork_ms():
    r, w = os.pipe(); t0 = time.perf_counter(); pid = os.fork()
    if pid == 0:
        os.write(w, b"x"); os._exit(0)
    os.read(r, 1); dt = time.perf_counter() - t0; os.waitpid(pid, 0); os.close(r); os.close(w); return dt * 1e3
async def tasks(n):
    out = []
    for _ in range(n):
        ev = asyncio.Event(); t0 = time.perf_counter()
        async def go(): ev.set()
        asyncio.get_running_loop().create_task(go()); await ev.wait(); out.append((time.perf_counter() - t0) * 1e3)
    return out
try:
    import uvloop; run = uvloop.run
except ImportError:
    run = asyncio.run
print(json.dumps({"thread_ms": [thread_ms() for _ in range(n)], "fork_ms": [fork_ms() for _ in range(n // 4 or 1)],
                  "task_ms": run(tasks(n))}))
"""


def creation(bench: Bench) -> dict[str, Any]:
    """Spawn a prefork worker (SIGTTIN → visible in /_lab/stats) vs start a thread vs schedule a task."""
    if (skip := native_only(bench, "worker spawning (SIGTTIN)")):
        return skip
    p = bench.plan
    reps = p.pick(6, 20)
    bench.progress.step("creation · SIGTTIN → new worker (prefork)", reps * 0.25 + SERVER_START_S)
    spawn_ms, vis_ms = [], []
    srv = bench.server("prefork", ["--workers", "2"])
    t_start = time.perf_counter()
    srv.start()
    server_start_ms = (time.perf_counter() - t_start) * 1000
    try:
        with httpx.Client(timeout=5) as c:
            for _ in range(reps):
                before = {p_["pid"] for p_ in c.get(f"{srv.url}/_lab/stats").json()["processes"]}
                t0 = time.perf_counter()
                srv.signal(signal.SIGTTIN)
                new: set[int] = set()
                while time.perf_counter() - t0 < 5:
                    doc = c.get(f"{srv.url}/_lab/stats").json()
                    new = {p_["pid"] for p_ in doc["processes"]} - before
                    if new:
                        break
                vis_ms.append((time.perf_counter() - t0) * 1000)
                # the new worker's first answer: fresh connections until it serves one (it competes in accept())
                while time.perf_counter() - t0 < 5:
                    if c.get(f"{srv.url}/whoami", headers={"Connection": "close"}).json()["pid"] in new:
                        spawn_ms.append((time.perf_counter() - t0) * 1000)
                        break
                srv.signal(signal.SIGTTOU)
                time.sleep(0.1)
    finally:
        srv.stop()
    n = p.pick(300, 2000)
    bench.progress.step("creation · thread / task / fork in a pinned snippet", 1.5)
    out = subprocess.run(taskset(bench.pin.server, [sys.executable, "-c", CREATION_SNIPPET, str(n)]),
                         capture_output=True, text=True, timeout=60)
    snippet = __import__("json").loads(out.stdout)
    summary = {
        "prefork worker: SIGTTIN → visible in /_lab/stats (ms)": {"median": med(vis_ms), "range": rng(vis_ms), "n": len(vis_ms)},
        "prefork worker: SIGTTIN → serves its first request (ms)": {"median": med(spawn_ms), "range": rng(spawn_ms), "n": len(spawn_ms)},
        "os.fork() → child runs (ms)": {"median": med(snippet["fork_ms"]), "range": rng(snippet["fork_ms"]), "n": len(snippet["fork_ms"])},
        "threading.Thread.start() → thread runs (ms)": {"median": med(snippet["thread_ms"]), "range": rng(snippet["thread_ms"]), "n": n},
        "loop.create_task() → task runs (ms)": {"median": med(snippet["task_ms"]), "range": rng(snippet["task_ms"]), "n": n},
        "whole server: exec → listening (ms)": {"median": round(server_start_ms, 1), "range": None, "n": 1},
    }
    return {"raw": {"sigttin_visible_ms": vis_ms, "sigttin_first_answer_ms": spawn_ms, "snippet": snippet,
                    "server_start_ms": server_start_ms},
            "summary": summary}


# -- alone: ceiling + context switches ---------------------------------------------------------------------
def alone(bench: Bench, model: str, flags: list[str], label: str, users: int, duration: float, workload: str,
          *, cpus: tuple[int, ...] | None = None, probe: str | None = None, **options: Any) -> dict[str, Any]:
    """One model alone: load it, sample it, optionally probe PROBE's latency from the side."""
    srv = bench.server(model, flags, cpus=cpus)
    srv.start()
    probe_ms: list[float] = []
    stop = threading.Event()

    def prober() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.wait(0.05):
                t = time.perf_counter()
                try:
                    c.get(f"{srv.url}{probe}")
                    probe_ms.append((time.perf_counter() - t) * 1000)
                except httpx.HTTPError:
                    pass
    try:
        before = get_stats(srv.url)
        ctx_before = tree_ctx(before) if bench.native else None
        th = threading.Thread(target=prober, daemon=True)
        if probe:
            th.start()
        with StatsSampler({model: srv.url}) as sampler:
            result = bench.locust({model: srv.url}, users, duration, workload, label, **options)
        stop.set()
        if probe:
            th.join(12)
        after = get_stats(srv.url)
        ctx_after = tree_ctx(after) if bench.native else None
    finally:
        stop.set()
        srv.stop()
    result["samples"] = sampler.samples
    result["before"] = before and {"totals": before["totals"], "counters": before["counters"],
                                   "threads_ctx": ctx_before}
    result["after"] = after and {"totals": after["totals"], "counters": after["counters"], "threads_ctx": ctx_after}
    result["probe_ms"] = [round(x, 2) for x in probe_ms]
    result["server_flags"] = flags
    result["accounting_rows"] = accounting_rows(result)
    return result


def context(bench: Bench) -> dict[str, Any]:
    """Same hello load on each model alone: context switches per request, the ceiling, Locust's own CPU."""
    p = bench.plan
    users = p.pick(16, 24)
    runs = {m: alone(bench, m, [], f"context · hello · {m} alone", users, p.step, "hello") for m in p.models}
    summary: dict[str, Any] = {"users": users}
    for m, r in runs.items():
        b, a = (r["before"] or {}).get("totals"), (r["after"] or {}).get("totals")
        reqs = ((r["after"] or {}).get("counters", {}).get("requests", 0)
                - (r["before"] or {}).get("counters", {}).get("requests", 0))
        ss = locustrun.server_stats(r, m)
        entry = {"rps": ss.get("rps"), "p50_ms": ss.get("p50_ms"), "p99_ms": ss.get("p99_ms"),
                 "server_requests": reqs, "locust_cpu_cores": r["locust_cpu"]["max_process_core_share"],
                 "generator_bound": r["generator_bound"], "rss_peak_mb": _mb(peak(r["samples"][m], "rss")),
                 "uss_peak_mb": _mb(peak(r["samples"][m], "uss")), "pss_peak_mb": _mb(peak(r["samples"][m], "pss"))}
        tb, ta = (r["before"] or {}).get("threads_ctx"), (r["after"] or {}).get("threads_ctx")
        if tb and ta and reqs > 0:  # every thread (see tree_ctx); /_lab/stats' main-thread figure kept beside it
            entry["voluntary_per_request"] = round((ta["voluntary"] - tb["voluntary"]) / reqs, 3)
            entry["involuntary_per_request"] = round((ta["involuntary"] - tb["involuntary"]) / reqs, 3)
            entry["ctx_source"] = "/proc/PID/task/*/status (all threads)"
        elif a and b and reqs > 0:
            entry["voluntary_per_request"] = round((a["ctx_voluntary"] - b["ctx_voluntary"]) / reqs, 3)
            entry["involuntary_per_request"] = round((a["ctx_involuntary"] - b["ctx_involuntary"]) / reqs, 3)
            entry["ctx_source"] = "/_lab/stats (main threads only)"
        if a and b and reqs > 0:
            entry["main_thread_ctx_per_request"] = round(
                (a["ctx_voluntary"] + a["ctx_involuntary"] - b["ctx_voluntary"] - b["ctx_involuntary"]) / reqs, 3)
            entry["server_cpu_ms_per_request"] = round((a["cpu_seconds"] - b["cpu_seconds"]) * 1000 / reqs, 4)
        summary[m] = entry
    return {"raw": {"runs": runs}, "summary": summary}


def wrk(bench: Bench) -> dict[str, Any]:
    """The hello ceiling measured by wrk (C, one thread, on the generator core) as a cross-check of Locust."""
    import shutil
    path = shutil.which("wrk")
    if not path:
        return {"skipped": "wrk is not installed", "raw": {}, "summary": {}}
    p = bench.plan
    reps = p.pick(1, 3)
    conns = 16  # ≤ the pool's threads: a pool that pins keep-alive connections is not flattered (DESIGN.md)
    dur = max(1, int(p.pick(1, 3)))
    out: dict[str, Any] = {}
    for m in p.models:
        rps: list[float] = []
        with bench.server(m) as srv:
            for i in range(reps):
                bench.progress.step(f"wrk · hello · {m} ({i + 1}/{reps})", dur + 0.3)
                res = subprocess.run(taskset(bench.pin.locust, [path, "-t1", f"-c{conns}", f"-d{dur}s",
                                                                  f"{srv.url}/"]),
                                     capture_output=True, text=True, timeout=dur + 30)
                for line in res.stdout.splitlines():
                    if line.startswith("Requests/sec:"):
                        rps.append(float(line.split()[1]))
                out.setdefault("raw_output", {})[f"{m}#{i}"] = res.stdout[-800:]
        out[m] = {"rps_median": med(rps), "rps_range": rng(rps), "runs": rps}
    summary = {m: {"rps_median": out[m]["rps_median"], "rps_range": out[m]["rps_range"]} for m in p.models}
    summary["settings"] = f"wrk -t1 -c{conns} -d{dur}s, {reps} run(s), wrk pinned like Locust"
    return {"raw": out, "summary": summary}


# -- multi-core ------------------------------------------------------------------------------------------------
def multicore(bench: Bench) -> dict[str, Any]:
    """/cpu at rising concurrency, each model alone on every core, with `/` latency probed from the side."""
    p = bench.plan
    levels = p.pick([1, 4], [1, 2, 4, 8])
    cpu_ms = 10
    flags = {"prefork": ["--workers", "4"], "threadpool": ["--threads", "32"]}
    rows = []
    runs = {}
    for m in p.models:
        for u in levels:
            r = alone(bench, m, flags.get(m, []), f"multi-core · /cpu · {m} · {u} users", u, p.step, "cpu",
                      cpus=bench.pin.all, probe="/", cpu_ms=cpu_ms)
            ss = locustrun.server_stats(r, m)
            rows.append({"model": m, "users": u, "rps": ss.get("rps"), "p50_ms": ss.get("p50_ms"),
                         "p99_ms": ss.get("p99_ms"), "probe_p50_ms": med(r["probe_ms"]),
                         "probe_p99_ms": _pct(r["probe_ms"], 99), "generator_bound": r["generator_bound"]})
            runs[f"{m}@{u}"] = r
    summary: dict[str, Any] = {"cpu_ms": cpu_ms, "cores": len(bench.pin.all), "levels": levels}
    top = max(levels)
    for m in p.models:
        by = {r["users"]: r for r in rows if r["model"] == m}
        if by.get(1) and by.get(top) and by[1]["rps"]:
            summary[f"{m} speedup {top} vs 1 users"] = round((by[top]["rps"] or 0) / by[1]["rps"], 2)
        summary[f"{m} / p99 at {top} users (ms)"] = by.get(top, {}).get("probe_p99_ms")
    return {"raw": {"rows": rows, "runs": runs}, "summary": summary}


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * q / 100))], 2)


# -- concurrency for I/O -------------------------------------------------------------------------------------
def io(bench: Bench) -> dict[str, Any]:
    """/io?ms=50 at rising users, the three models side by side: rps and p50/p99."""
    p = bench.plan
    levels = p.pick([4, 64], [1, 8, 32, 64, 128])
    rows, runs = [], {}
    for u in levels:
        r = side_by_side(bench, f"I/O · /io?ms=50 · {u} users per server · all models", {}, u, p.step, "io",
                         io_ms=50)
        for m in p.models:
            ss = locustrun.server_stats(r, m)
            ok = ss.get("requests", 0) - ss.get("failures", 0)
            rows.append({"model": m, "users": u, "rps": ss.get("rps"), "ok_rps": round((ss.get("rps") or 0) * ok / ss["requests"], 1)
                         if ss.get("requests") else 0.0,
                         "failures": ss.get("failures"), "p50_ms": ss.get("p50_ms"), "p99_ms": ss.get("p99_ms"),
                         "generator_bound": r["generator_bound"]})
        runs[str(u)] = r
    summary: dict[str, Any] = {"io_ms": 50, "levels": levels}
    top = max(levels)
    for m in p.models:
        row = next((r for r in rows if r["model"] == m and r["users"] == top), {})
        summary[f"{m} at {top} users"] = {"ok_rps": row.get("ok_rps"), "p50_ms": row.get("p50_ms"),
                                          "p99_ms": row.get("p99_ms"), "failures": row.get("failures")}
    return {"raw": {"rows": rows, "runs": runs}, "summary": summary}


# -- over-threading ------------------------------------------------------------------------------------------
def _ctx_per_req(r: dict[str, Any], reqs: int, kind: str) -> float | None:
    tb, ta = (r["before"] or {}).get("threads_ctx"), (r["after"] or {}).get("threads_ctx")
    return round((ta[kind] - tb[kind]) / reqs, 3) if ta and tb and reqs else None


def overthreading(bench: Bench) -> dict[str, Any]:
    """Thread-pool size sweep on a mixed load: where more threads stop helping."""
    if "threadpool" not in bench.plan.models:
        return {"skipped": "threadpool not among --models", "raw": {}, "summary": {}}
    if (skip := native_only(bench, "the thread sweep")):
        return skip
    p = bench.plan
    sizes = p.pick([4, 32, 256], [2, 8, 32, 128, 512])
    users = p.pick(48, 96)
    rows, runs = [], {}
    for t in sizes:
        r = alone(bench, "threadpool", ["--threads", str(t), "--queue", "1024"],
                  f"over-threading · threadpool --threads {t} · mixed", users, p.step, "mixed", io_ms=50, cpu_ms=2)
        agg = r["stats"].get("Aggregated", {})
        reqs = ((r["after"] or {}).get("counters", {}).get("requests", 0)
                - (r["before"] or {}).get("counters", {}).get("requests", 0))
        rows.append({"threads": t, "rps": agg.get("rps"), "p50_ms": agg.get("p50_ms"), "p99_ms": agg.get("p99_ms"),
                     "failures": agg.get("failures"), "generator_bound": r["generator_bound"],
                     "involuntary_per_request": _ctx_per_req(r, reqs, "involuntary"),
                     "voluntary_per_request": _ctx_per_req(r, reqs, "voluntary"),
                     "rss_mb": _mb(peak(r["samples"]["threadpool"], "rss"))})
        runs[str(t)] = r
    best = max(rows, key=lambda r: r["rps"] or 0)
    return {"raw": {"rows": rows, "runs": runs},
            "summary": {"users": users, "best_threads": best["threads"], "best_rps": best["rps"],
                        "rows": {str(r["threads"]): {"rps": r["rps"], "p99_ms": r["p99_ms"]} for r in rows}}}


SCENARIOS: dict[str, tuple[str, str, Callable[[Bench], dict[str, Any]], float, float]] = {
    # name: (table row, title, function, planned seconds quick, planned seconds default at --duration 6)
    "memory": ("memory space / resource usage", "Memory: RSS vs USS vs PSS", memory, 8, 16),
    "faults": ("fault isolation", "Fault isolation: crash and segfault under load", faults, 14, 75),
    "hang": ("hung work", "Hung work: /fault/hang under load", hang, 15, 36),
    "leak": ("leaks", "Leaks: memory over time", leak, 12, 30),
    "communication": ("communication", "Communication: the /counter race and the IPC of stats", communication, 5, 10),
    "creation": ("creation overhead", "Creation overhead: worker vs thread vs task", creation, 5, 10),
    "context": ("context switching", "Context switching and the hello ceiling", context, 11, 25),
    "wrk": ("(generator check)", "wrk cross-check of the hello ceiling", wrk, 5, 12),
    "multicore": ("multi-core", "Multi-core: /cpu at rising concurrency", multicore, 22, 100),
    "io": ("concurrency for I/O", "Concurrency for I/O: /io?ms=50 at rising users", io, 8, 40),
    "overthreading": ("over-threading", "Over-threading: thread-pool size sweep", overthreading, 11, 40),
}
