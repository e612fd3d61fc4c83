"""One headless Locust run as a subprocess: its statistics, its fault accounting and its own CPU.

Locust is never imported here (it monkey-patches the interpreter with gevent); we start `locust` with the
project's locustfile, read back its JSON statistics and the per-server fault-accounting JSON it writes at test
stop, and watch its process tree with psutil so the report can tell a server's ceiling from the generator's.
While it runs, its CSV statistics (rewritten every second, flushed every few) say how far it got (`live`).

The plain-Python parts of loadtest/ (the accounting, the timeline) are the bench's too: loadtest/ ships beside
the package, where the locustfile is, so its directory is appended to sys.path here — appended, so an
installed package always wins a name. Import from it only modules that import neither Locust nor gevent
(test_bench checks that the bench never loads them).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..faults import kind_of
from ..lab import project_root
from ..launch import clean_env
from .runner import taskset

if str(project_root()) not in sys.path:
    sys.path.append(str(project_root()))
from loadtest.accounting import RecoveryWatch, injection_key  # noqa: E402
from loadtest.timeline import read as read_timeline  # noqa: E402

__all__ = ["LocustRun", "RecoveryWatch", "injection_key", "live", "read_timeline", "run", "server_stats", "url_env",
           "user_class"]


def user_class(model: str) -> str:
    """The locustfile's user class for MODEL: hybrid-threads → HybridThreadsUser."""
    return "".join(part.capitalize() for part in model.split("-")) + "User"


def url_env(model: str) -> str:
    """The variable the locustfile reads MODEL's URL from: hybrid-loop → WEBMODELS_HYBRID_LOOP_URL."""
    return "WEBMODELS_" + model.upper().replace("-", "_") + "_URL"


GENERATOR_BOUND = 0.90  # share of one core at which Locust, not the server, sets the pace


@dataclass
class LocustRun:
    """What to run: which servers (model → URL), how many users, for how long, with which locustfile options."""

    targets: dict[str, str]
    users: int
    duration: float
    workload: str = "hello"
    options: dict[str, Any] = field(default_factory=dict)  # --io-ms 50 → {"io_ms": 50}
    processes: int = 0
    spawn_rate: float = 0.0  # 0: all users at once


def locust_bin() -> str:
    here = Path(sys.executable).parent / "locust"
    return str(here) if here.exists() else (shutil.which("locust") or "locust")


def locustfile() -> Path:
    return project_root() / "loadtest" / "locustfile.py"


def live(workdir: Path) -> str:
    """How far the Locust run writing its CSV statistics in WORKDIR got: requests, failures, faults injected."""
    requests: int | None = None
    failures = faults = 0
    try:
        with open(workdir / "locust_stats.csv", newline="") as f:
            for row in csv.DictReader(f):
                name, n = row["Name"], int(row["Request Count"])
                if name == "Aggregated":  # the last row: a file without it was caught mid-rewrite
                    requests, failures = n, int(row["Failure Count"])
                elif kind_of(name.partition(" ")[2]):  # "prefork /fault/crash": the injector's requests
                    faults += n
    except (OSError, KeyError, ValueError, TypeError):  # not written yet, or caught mid-rewrite
        return ""
    if requests is None:
        return ""
    return f"{_n(requests)} requests ({_n(failures)} failed), {_n(faults)} faults injected"


def _n(x: int) -> str:
    return f"{x:,}".replace(",", " ")  # the report's thousands separator


def _opt(name: str) -> str:
    return "--" + name.replace("_", "-")


class TreeCPU:
    """Sum the CPU seconds of a process and its descendants, sampled so exited children still count."""

    def __init__(self, pid: int) -> None:
        self.root = pid
        self.seen: dict[int, float] = {}
        self.max_proc_share = 0.0
        self._last: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.monotonic()

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        now = time.monotonic()
        for p in procs:
            try:
                t = p.cpu_times()
                cpu = t.user + t.system
            except psutil.Error:
                continue
            self.seen[p.pid] = cpu
            prev = self._last.get(p.pid)
            if prev and now - prev[0] >= 0.9:
                self.max_proc_share = max(self.max_proc_share, (cpu - prev[1]) / (now - prev[0]))
                self._last[p.pid] = (now, cpu)
            elif not prev:
                self._last[p.pid] = (now, cpu)

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def start(self) -> "TreeCPU":
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._sample()
        self._stop.set()
        self._thread.join(2)
        wall = time.monotonic() - self.t0
        total = sum(self.seen.values())
        return {"cpu_s": round(total, 3), "wall_s": round(wall, 3), "processes": len(self.seen),
                "cores": round(total / wall, 3) if wall else 0.0,
                "max_process_core_share": round(self.max_proc_share, 3)}


def _percentile(times: dict[str, int], total: int, q: float) -> float | None:
    """Locust keeps response times in rounded buckets ({ms: count}); read the Q-th percentile from them."""
    if not total:
        return None
    want = total * q
    seen = 0
    for ms, n in sorted(((float(k), v) for k, v in times.items())):
        seen += n
        if seen >= want:
            return ms
    return None


def read_stats_json(path: Path) -> dict[str, dict[str, Any]]:
    """Locust's --json-file → {name: {requests, failures, rps, p50_ms, p90_ms, p99_ms, avg_ms, max_ms}}.

    The JSON file holds the final statistics; the CSV is written on a timer and can miss the last second.
    A rate is requests over the span from the row's first request to its last.
    """
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    entries = json.loads(path.read_text())
    agg: dict[str, Any] = {"requests": 0, "failures": 0, "times": {}, "t0": None, "t1": None, "total_ms": 0.0,
                           "max_ms": 0.0}
    for e in entries:
        n = e["num_requests"]
        span = (e.get("last_request_timestamp") or 0) - (e.get("start_time") or 0)
        times = e.get("response_times") or {}
        out[e["name"]] = {
            "requests": n, "failures": e["num_failures"], "rps": round(n / span, 1) if span > 0 else None,
            "avg_ms": round(e["total_response_time"] / n, 3) if n else None,
            "p50_ms": _percentile(times, n, 0.50), "p90_ms": _percentile(times, n, 0.90),
            "p99_ms": _percentile(times, n, 0.99), "max_ms": e.get("max_response_time"),
            # completions per epoch second, and failures: the run's time line for this row
            "per_s": sorted([int(k), v] for k, v in (e.get("num_reqs_per_sec") or {}).items()),
            "fail_per_s": sorted([int(k), v] for k, v in (e.get("num_fail_per_sec") or {}).items()),
        }
        agg["requests"] += n
        agg["failures"] += e["num_failures"]
        agg["total_ms"] += e["total_response_time"]
        agg["max_ms"] = max(agg["max_ms"], e.get("max_response_time") or 0)
        for k, v in times.items():
            agg["times"][k] = agg["times"].get(k, 0) + v
        if e.get("start_time"):
            agg["t0"] = min(agg["t0"] or e["start_time"], e["start_time"])
        if e.get("last_request_timestamp"):
            agg["t1"] = max(agg["t1"] or 0, e["last_request_timestamp"])
    if entries:
        n, span = agg["requests"], (agg["t1"] or 0) - (agg["t0"] or 0)
        out["Aggregated"] = {"requests": n, "failures": agg["failures"], "rps": round(n / span, 1) if span > 0 else None,
                             "avg_ms": round(agg["total_ms"] / n, 3) if n else None,
                             "p50_ms": _percentile(agg["times"], n, 0.5), "p90_ms": _percentile(agg["times"], n, 0.9),
                             "p99_ms": _percentile(agg["times"], n, 0.99), "max_ms": agg["max_ms"]}
    return out


def run(spec: LocustRun, *, cpus: tuple[int, ...], workdir: Path | None = None,
        extra_args: list[str] | None = None, timeout_slack: float = 30.0) -> dict[str, Any]:
    """Run SPEC and return its figures; the run is bounded by --run-time and a hard wall-clock timeout."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix="wm-locust-"))
    tmp.mkdir(parents=True, exist_ok=True)
    prefix = tmp / "locust"
    accounting = tmp / "accounting.json"
    classes = [user_class(m) for m in spec.targets]
    argv = [locust_bin(), "-f", str(locustfile()), "--headless", "--only-summary", "--skip-log-setup",
            "-u", str(spec.users), "-r", str(spec.spawn_rate or spec.users),
            "-t", f"{max(1, round(spec.duration))}s", "--stop-timeout", "0",
            "--json-file", str(prefix), "--csv", str(prefix), "--workload", spec.workload,
            "--accounting-json", str(accounting)]
    if spec.processes:
        argv += ["--processes", str(spec.processes)]
    for key, value in spec.options.items():
        argv += [_opt(key), str(value)]
    argv += list(extra_args or [])
    argv += classes
    env = clean_env()
    for model, url in spec.targets.items():
        env[url_env(model)] = url
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.time()
    proc = subprocess.Popen(taskset(cpus, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=str(project_root()), start_new_session=True)
    cpu = TreeCPU(proc.pid).start()
    try:
        out, _ = proc.communicate(timeout=spec.duration + timeout_slack)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
    usage = cpu.stop()
    stats = read_stats_json(Path(f"{prefix}.json"))
    acc: dict[str, Any] = {}
    acc_run: dict[str, Any] = {}
    if accounting.exists():
        doc = json.loads(accounting.read_text())
        acc, acc_run = doc.get("servers", {}), doc.get("run", {})
        for row in acc.values():
            row.pop("server_view", None)  # the Servers tab's last poll: the bench samples /_lab/stats itself
    return {
        "argv": [a for a in argv if not a.startswith(str(tmp))], "users": spec.users,
        "duration_s": spec.duration, "workload": spec.workload, "options": spec.options,
        "processes": spec.processes, "started_at": t0, "wall_s": round(time.time() - t0, 3),
        "returncode": proc.returncode, "stats": stats, "accounting": acc, "accounting_run": acc_run, "locust_cpu": usage,
        "generator_bound": usage["max_process_core_share"] >= GENERATOR_BOUND,
        "log_tail": out.splitlines()[-40:] if proc.returncode not in (0, 1) or not stats else [],
    }


def server_stats(result: dict[str, Any], model: str) -> dict[str, Any]:
    """Locust's rows for MODEL's user requests (the fault requests excluded), summed."""
    rows = {n: s for n, s in result["stats"].items() if n.startswith(model + " ") and "/fault/" not in n}
    if not rows:
        return {"requests": 0, "failures": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None}
    if len(rows) == 1:
        return dict(next(iter(rows.values())))
    # several routes (a mixed workload): sum counts and rates; percentiles from the busiest route are a
    # stand-in, so say which
    total = sum(r["requests"] for r in rows.values())
    busiest = max(rows.values(), key=lambda r: r["requests"])
    return {"requests": total, "failures": sum(r["failures"] for r in rows.values()),
            "rps": sum(r["rps"] or 0 for r in rows.values()), "p50_ms": busiest["p50_ms"],
            "p99_ms": busiest["p99_ms"], "percentiles_of": max(rows, key=lambda n: rows[n]["requests"])}

