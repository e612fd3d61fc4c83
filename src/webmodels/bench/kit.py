"""What every scenario uses: the plan, the shared context, the two ways of sharing the machine, small statistics.

Two ways of sharing the machine, stated in the report:
- *side by side*: the servers run at once on the server core and one Locust run loads all of them (the
  locustfile's user classes, equal users each). Used where the server mostly waits (I/O, faults, hangs,
  leaks, the counter race), so sharing one core changes little and the comparison is simultaneous.
- *alone*: one model at a time owns the server core (the ceiling, context switches, the thread sweep) or
  every core (multi-core).

What a scenario keeps goes to results.json, which the report alone reads: `pack_samples` stores the stats
sampler's samples as columns of the few fields the report uses (the full /_lab/stats documents, repeated four
times a second, were most of a 2.3 MB file).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import httpx

from .. import config
from ..faults import kind_of
from ..lab import SERVERS as LAB_SERVERS
from . import locustrun
from .runner import BenchServer, Pinning, Progress, RemoteServer, StatsSampler, get_stats

# The models the bench can load: the lab's servers, each with its Locust user class (lab.SERVERS); a model of
# `webmodels serve` that is not a lab server yet has no user class, so Locust could not load it.
MODELS = tuple(m for m in config.MODELS if m in LAB_SERVERS)
MASTER_MODELS = config.MASTER_MODELS  # a master and worker processes
HYBRIDS = ("hybrid-threads", "hybrid-loop")
SIZE_KEYS = ("workers", "threads")  # of a server's effective config, kept with its final stats
LOCUST_OVERHEAD_S = 1.5  # start-up and shutdown of one Locust subprocess, for the progress estimate
SERVER_START_S = 0.4
BEFORE_TIMEOUT_S = 10.0  # the first /_lab/stats of a server alone, and its last: worth waiting for


@dataclass
class Plan:
    """Knobs of one bench run; `quick` shrinks durations, repetitions and sweeps to about a minute."""

    quick: bool = False
    duration: float | None = None  # seconds per load step (None: 2 quick, 6 default)
    models: tuple[str, ...] = MODELS
    targets: str = "native"  # native | compose
    compose_urls: dict[str, str] = field(default_factory=dict)
    connections: int | None = None  # many idle clients: connections to hold (None: 10000, 200 quick)
    seed: int | None = None  # soak: chaos schedule seed (None: drawn and printed)

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
            if model not in self.plan.compose_urls:
                raise RuntimeError(f"the lab has no port for {model} (lab.LAB_PORTS)")
            return RemoteServer(model, self.plan.compose_urls[model])
        return BenchServer(model, flags, cpus=cpus or self.pin.server, restart=restart)

    def locust(self, targets: dict[str, str], users_each: int, duration: float, workload: str,
               label: str, *, extra_args: list[str] | None = None, **options: Any) -> dict[str, Any]:
        self.runs += 1
        workdir = self.workdir / f"run{self.runs:03d}"
        self.progress.step(label, duration + LOCUST_OVERHEAD_S, detail=lambda: locustrun.live(workdir))
        spec = locustrun.LocustRun(targets=targets, users=users_each * len(targets), duration=duration,
                                   workload=workload, options={k: v for k, v in options.items() if v is not None})
        return locustrun.run(spec, cpus=self.pin.locust, workdir=workdir, extra_args=extra_args)


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


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * q / 100))], 2)


def start_all(servers: Mapping[Any, Any]) -> None:
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


def stop_all(servers: Mapping[Any, Any]) -> None:
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


def peak(samples: dict[str, Any], key: str) -> int | None:
    samples = unpack_samples(samples)
    vals = [s["totals"][key] for s in samples if s.get("up") and s.get("totals")]
    return max(vals) if vals else None


def series(samples: dict[str, Any], key: str, *path: str) -> list[list[float]]:
    """[[t, value], ...] for a totals key (or a counters path) of a sampler's packed samples."""
    samples = unpack_samples(samples)
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


def settled_stats(url: str, within_s: float = 2.0) -> dict[str, Any] | None:
    """/_lab/stats once the requests a stopped load left behind are done (in_flight read the same twice in a row).

    Locust abandons its in-flight requests at stop; the server still finishes them. What is busy after that is
    what the load left stuck (a hung thread), not what it was doing. None if the server does not answer.
    """
    deadline = time.monotonic() + within_s
    doc = get_stats(url)
    while doc is not None and time.monotonic() < deadline:
        time.sleep(0.1)
        again = get_stats(url)
        if again is None or again["counters"].get("in_flight") == doc["counters"].get("in_flight"):
            return again or doc
        doc = again
    return doc


def native_only(bench: Bench, name: str) -> dict[str, Any] | None:
    if bench.native:
        return None
    return {"skipped": f"{name} needs servers started with special flags or signals; run with --targets native",
            "raw": {}, "summary": {}}


def mb(b: float | None) -> float | None:
    return None if b is None else round(b / 2**20, 2)


def kb(b: float | None) -> float | None:
    return None if b is None else round(b / 2**10, 1)


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
        final = {m: settled_stats(s.url) for m, s in servers.items()}
    finally:
        stop_all(servers)
    result["samples"] = {m: pack_samples(v) for m, v in sampler.samples.items()}
    result["sampler_t0"] = sampler.t0
    result["restarts"] = {m: s.deaths for m, s in servers.items()}
    result["final_stats"] = {m: (None if d is None else {"counters": d["counters"], "totals": d["totals"],
                                                         "config": {k: d["config"].get(k) for k in SIZE_KEYS}})
                             for m, d in final.items()}
    result["server_flags"] = {m: flags.get(m, []) for m in models}
    result["accounting_rows"] = accounting_rows(result)
    return result


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
        # a master's workers may still be booting when it listens: its first answer can take seconds on a busy
        # machine, and a run without its "before" loses its per-request figures
        before = get_stats(srv.url, BEFORE_TIMEOUT_S)
        ctx_before = tree_ctx(before) if bench.native else None
        th = threading.Thread(target=prober, daemon=True)
        if probe:
            th.start()
        with StatsSampler({model: srv.url}) as sampler:
            result = bench.locust({model: srv.url}, users, duration, workload, label, **options)
        stop.set()
        if probe:
            th.join(12)
        after = get_stats(srv.url, BEFORE_TIMEOUT_S)
        ctx_after = tree_ctx(after) if bench.native else None
    finally:
        stop.set()
        srv.stop()
    result["samples"] = {m: pack_samples(v) for m, v in sampler.samples.items()}
    result["before"] = before and {"totals": before["totals"], "counters": before["counters"],
                                   "threads_ctx": ctx_before, **_per_worker(before)}
    result["after"] = after and {"totals": after["totals"], "counters": after["counters"], "threads_ctx": ctx_after,
                                 **_per_worker(after)}
    result["probe_ms"] = [round(x, 2) for x in probe_ms]
    result["server_flags"] = flags
    result["accounting_rows"] = accounting_rows(result)
    return result


def _per_worker(stats: dict[str, Any]) -> dict[str, Any]:
    """/_lab/stats' per-worker list (one row per serving process)."""
    return {"per_worker": stats["per_worker"]} if stats.get("per_worker") else {}


def second_zero(result: dict[str, Any]) -> int:
    """The epoch second a Locust run's test started in (its accounting says when; else the process start)."""
    return int((result.get("accounting_run") or {}).get("started_at") or result["started_at"])


def ok_rate(result: dict[str, Any], model: str) -> list[list[float]]:
    """[[second of the run, successful user requests completed in it], ...] from Locust's own counters.

    Second 0 is the one the test started in (Locust's own start-up before it is not the run), and the last is
    the one it stopped in (partial), so the one before it is the last full second.
    """
    reqs: dict[int, int] = {}
    t0, run = second_zero(result), result.get("accounting_run") or {}
    for name, row in result["stats"].items():
        if not name.startswith(model + " ") or kind_of(name.partition(" ")[2]):  # user requests only
            continue
        for sec, n in row.get("per_s", []):
            reqs[sec] = reqs.get(sec, 0) + n
        for sec, n in row.get("fail_per_s", []):
            reqs[sec] = reqs.get(sec, 0) - n
    if not reqs:
        return []
    last = int(run["stopped_at"]) if run.get("stopped_at") else t0 + int(round(result["duration_s"]))
    return [[sec - t0, reqs.get(sec, 0)] for sec in range(t0, last + 1)]


def unanswered_s(samples: dict[str, Any]) -> float:
    """Seconds during which /_lab/stats did not answer (each failed poll blocks the sampler up to its timeout)."""
    samples = unpack_samples(samples)
    total = 0.0
    for a, b in zip(samples, samples[1:]):
        if not a.get("up"):
            total += b["t"] - a["t"]
    return round(total, 2)


def ctx_per_req(r: dict[str, Any], reqs: int, kind: str) -> float | None:
    tb, ta = (r["before"] or {}).get("threads_ctx"), (r["after"] or {}).get("threads_ctx")
    return round((ta[kind] - tb[kind]) / reqs, 3) if ta and tb and reqs else None



# -- samples, stored as columns -------------------------------------------------------------------------------
SAMPLE_FIELDS = (("t", None), ("up", None), ("rss", "totals"), ("uss", "totals"), ("pss", "totals"),
                 ("processes", "totals"), ("threads", "totals"), ("requests", "counters"),
                 ("in_flight", "counters"), ("busy_threads", "counters"), ("loop_lag_ms", "counters"),
                 ("loop_lag_max_ms", "counters"), ("workers", "counters"))


def pack_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Sampler dicts → {"cols": [...], "rows": [[...], ...]} with only the fields the report reads."""
    rows = []
    for s in samples:
        row = []
        for key, where in SAMPLE_FIELDS:
            v = s.get(key) if where is None else (s.get(where) or {}).get(key)
            row.append(int(v) if isinstance(v, bool) else v)
        rows.append(row)
    return {"cols": [k for k, _ in SAMPLE_FIELDS], "rows": rows}


def unpack_samples(samples: dict[str, Any]) -> list[dict[str, Any]]:
    """Packed samples → [{"t", "up", "totals": {...}, "counters": {...}}, ...]."""
    where = dict(SAMPLE_FIELDS)
    out = []
    for row in samples["rows"]:
        d: dict[str, Any] = {"totals": {}, "counters": {}}
        for key, v in zip(samples["cols"], row):
            if where.get(key) is None:
                d[key] = bool(v) if key == "up" else v
            elif v is not None:
                d[where[key]][key] = v
        out.append(d)
    return out
