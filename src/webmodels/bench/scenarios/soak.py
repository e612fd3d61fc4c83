"""Soak: every server under mixed load while a seeded chaos schedule breaks them; every failure attributed.

All servers run side by side under a mixed Locust load for `--duration` seconds (default 300; 30 with
--quick). A chaos schedule drawn from `--seed` (printed; the same seed gives the same schedule) fires,
every 1–3 s, one fault at one server: crash, segfault, hang (2 s), leak (4 MiB), raise, and a kill —
`kill --worker` (POST /_lab/kill?target=worker) for the models with a master, `kill --process` for the
single-process ones. The bench supervises the servers as the lab's supervisor does, but restarts a dead
process at once (no back-off): under a fault every few seconds, Docker's doubling back-off would measure the
supervisor's policy, not the model (DESIGN.md).

Attribution, with loadtest/accounting's rules: an injected fault takes effect when the fault request ends
for crash, segfault and kill (the process died then), when it is sent for the others; the server has
recovered when the first user request *sent* after that point succeeds. A failed user request (Locust's
per-request timeline, `--timeline`) belongs to the latest fault on its server that was sent before the
request ended and whose recovery point is not before the request was sent. A failure no fault explains is
*unattributed*: the goal is 0. Locust's HTTP client re-sends an idempotent GET whose connection closed
before the answer; when another worker takes it, that request counts as ok (slower), so what is attributed
is what users saw fail, not every request a fault touched.

Growth: once a second the bench reads each master's fds, threads, children and RSS, and its own (it is the
supervisor here); the report gives the least-squares slope per minute and the change from the first to the
last quarter of the run (medians), which must stay within a small tolerance.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from ...supervisor import describe_status
from ..kit import MASTER_MODELS, Bench, accounting_rows, native_only, slope, start_all, stop_all
from ..report import COLORS, REPORT_MODELS, Charts, Doc, fmt, guard
from . import Cells, Scenario

HANG_S = 2
LEAK_MB = 4
GAP_S = (1.0, 3.0)  # between two injections (any server)
FATAL = ("crash", "segfault", "kill --worker", "kill --process")  # effect when the fault request ends
# growth tolerated between the first and the last quarter (medians), per resource
TOLERANCE = {"fds": 2, "threads": 2, "children": 0, "rss_mib": 10.0}
BENCH_TOLERANCE = {"fds": 4, "threads": 4, "children": 0, "rss_mib": 30.0}


def faults_for(model: str) -> tuple[str, ...]:
    kill = "kill --worker" if model in MASTER_MODELS else "kill --process"
    return ("crash", "segfault", "hang", "leak", "raise", kill)


def schedule(seed: int, models: tuple[str, ...], duration: float) -> list[dict[str, Any]]:
    """The chaos schedule: [{"at": seconds into the run, "model", "fault"}], the same for the same seed."""
    rng = random.Random(seed)
    out, t = [], 2.0
    while t < duration - 4.0:  # the last faults get a few seconds to recover before the end
        model = rng.choice(models)
        out.append({"at": round(t, 3), "model": model, "fault": rng.choice(faults_for(model))})
        t += rng.uniform(*GAP_S)
    return out


def fault_request(fault: str) -> str:
    return {"crash": "/fault/crash", "segfault": "/fault/segfault", "hang": f"/fault/hang?s={HANG_S}",
            "leak": f"/fault/leak?mb={LEAK_MB}", "raise": "/fault/raise",
            "kill --worker": "/_lab/kill?target=worker", "kill --process": "/_lab/kill?target=process"}[fault]


class Chaos:
    """Fire the schedule from its own thread; each shot in its own thread (a hang blocks its request)."""

    def __init__(self, events: list[dict[str, Any]], urls: dict[str, str]) -> None:
        self.events, self.urls = events, urls
        self.fired: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._shots: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._loop, name="chaos", daemon=True)
        self.t0 = 0.0
        # one client for every shot (thread-safe): a client per shot builds an SSL context each time, and the
        # bench's own RSS is one of the figures that must not grow
        self.client = httpx.Client(headers={"Connection": "close"})

    def start(self, t0: float) -> "Chaos":
        self.t0 = t0
        self._thread.start()
        return self

    def _loop(self) -> None:
        for ev in self.events:
            if self._stop.wait(max(0.0, self.t0 + ev["at"] - time.time())):
                return
            shot = threading.Thread(target=self._fire, args=(ev,), daemon=True)
            shot.start()
            self._shots.append(shot)

    def _fire(self, ev: dict[str, Any]) -> None:
        sent = time.time()
        outcome = ""
        try:
            # POST: a client may re-send an idempotent GET after the connection drops (a second crash)
            r = self.client.post(self.urls[ev["model"]] + fault_request(ev["fault"]), timeout=HANG_S + 8)
            outcome = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        end = time.time()
        self.fired.append({**ev, "sent": sent, "end": end,
                           "effect": end if ev["fault"] in FATAL else sent, "outcome": outcome})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for shot in self._shots:
            shot.join(HANG_S + 10)
        self.client.close()


class Resources:
    """Sample the masters' and the bench's own fds, threads, children and RSS once a second."""

    def __init__(self, servers: dict[str, Any], interval: float = 1.0) -> None:
        self.servers, self.interval = servers, interval
        self.samples: dict[str, list[list[float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resources", daemon=True)
        self.t0 = time.time()

    @staticmethod
    def read(pid: int) -> list[float] | None:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                return [p.num_fds(), p.num_threads(), len(p.children()), round(p.memory_info().rss / 2**20, 2)]
        except psutil.Error:
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            t = round(time.time() - self.t0, 2)
            targets = {f"{m} master": s.pid for m, s in self.servers.items() if m in MASTER_MODELS}
            targets["bench (supervisor)"] = os.getpid()
            for name, pid in targets.items():
                if (v := self.read(pid)) is not None:
                    self.samples.setdefault(name, []).append([t, *v])

    def __enter__(self) -> "Resources":
        self.t0 = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


RESOURCE_COLS = ("fds", "threads", "children", "rss_mib")


def growth(samples: list[list[float]], tolerance: dict[str, float]) -> dict[str, Any]:
    """Per resource: first/last-quarter medians, their difference, the slope per minute, and a verdict."""
    out: dict[str, Any] = {}
    if len(samples) < 8:
        return {"too_few_samples": len(samples)}
    q = max(2, len(samples) // 4)
    ts = [s[0] for s in samples]
    for i, col in enumerate(RESOURCE_COLS, start=1):
        ys = [s[i] for s in samples]
        first, last = statistics.median(ys[:q]), statistics.median(ys[-q:])
        sl = slope(ts, ys)
        out[col] = {"first": first, "last": last, "delta": round(last - first, 2),
                    "slope_per_min": round(sl * 60, 3) if sl is not None else None,
                    "grows": last - first > tolerance[col]}
    return out


def attribute(records: list[dict[str, Any]], fired: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Attribute every failed user request to a fault on its server (accounting's rules, see the docstring)."""
    per: dict[str, Any] = {}
    for m in models:
        mine = [r for r in records if r["server"] == m and r["class"] != "expected"]
        oks = sorted(r["t"] for r in mine if r["ok"])
        injections = sorted((f for f in fired if f["model"] == m), key=lambda f: f["sent"])
        for inj in injections:  # recovery point: the first success sent at or after the effect
            i = bisect.bisect_left(oks, inj["effect"])
            inj["recovered_at"] = oks[i] if i < len(oks) else None
        by_fault: dict[str, int] = {}
        unattributed: list[dict[str, Any]] = []
        for r in mine:
            if r["ok"]:
                continue
            end = r["t"] + (r["ms"] or 0) / 1000
            cause = None
            for inj in reversed(injections):
                if inj["sent"] <= end and (inj["recovered_at"] is None or r["t"] <= inj["recovered_at"]):
                    cause = inj
                    break
            if cause is None:
                unattributed.append({"t": r["t"], "name": r["name"], "error": r["error"], "ms": r["ms"]})
            else:
                by_fault[cause["fault"]] = by_fault.get(cause["fault"], 0) + 1
        per[m] = {"requests": len(mine), "ok": len(oks), "failed": len(mine) - len(oks),
                  "attributed": by_fault, "unattributed": len(unattributed),
                  "unattributed_examples": unattributed[:5], "injected": len(injections),
                  "injected_by_fault": {k: sum(1 for f in injections if f["fault"] == k)
                                        for k in sorted({f["fault"] for f in injections})},
                  "never_recovered": sum(1 for f in injections if f["recovered_at"] is None)}
    return per


def read_timeline(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        with open(path) as f:
            for line in f:
                if line.strip():
                    out.append(json.loads(line))
    return out


def per_second(records: list[dict[str, Any]], t0: float, models: list[str]) -> dict[str, list[list[int]]]:
    """[[second, ok, failed], ...] per server by completion time: the timeline chart's data."""
    out: dict[str, dict[int, list[int]]] = {m: {} for m in models}
    for r in records:
        if r["class"] == "expected" or r["server"] not in out:
            continue
        sec = int(r["t"] + (r["ms"] or 0) / 1000 - t0)
        cell = out[r["server"]].setdefault(sec, [0, 0])
        cell[0 if r["ok"] else 1] += 1
    return {m: [[s, *v] for s, v in sorted(d.items())] for m, d in out.items()}


def serving(url: str, deadline_s: float = 10.0) -> float | None:
    """Seconds until GET / answers 200 (None: not within DEADLINE_S)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        try:
            if httpx.get(url + "/", timeout=1.0).status_code == 200:
                return round(time.monotonic() - t0, 2)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return None


def run(bench: Bench) -> dict[str, Any]:
    """All servers under mixed load for the soak's duration while the seeded chaos schedule fires."""
    if (skip := native_only(bench, "chaos (the bench must restart what it breaks)")):
        return skip
    p = bench.plan
    duration = p.duration or p.pick(30.0, 300.0)
    seed = p.seed if p.seed is not None else 1
    models = p.models
    events = schedule(seed, models, duration)
    servers = {m: bench.server(m, restart=True) for m in models}
    start_all(servers)
    timeline_dir = bench.workdir / f"soak-timeline-{seed}"
    try:
        urls = {m: s.url for m, s in servers.items()}
        chaos = Chaos(events, urls)
        with Resources(servers) as res:
            t0 = time.time()
            chaos.start(t0 + 1.0)  # Locust needs about a second to start its users
            result = bench.locust(urls, p.pick(3, 4), duration, "mixed", f"soak · {duration:.0f} s · seed {seed}",
                                  extra_args=["--timeline", str(timeline_dir)], io_ms=20, cpu_ms=2)
            chaos.stop()
        at_end = {m: serving(s.url) for m, s in servers.items()}
    finally:
        stop_all(servers)
    records = read_timeline(timeline_dir)
    fired = sorted(chaos.fired, key=lambda f: f["sent"])
    attribution = attribute(records, fired, list(models))
    run_t0 = chaos.t0 - 1.0
    resources = {name: {"cols": ["t", *RESOURCE_COLS], "rows": rows, "growth": growth(
        rows, BENCH_TOLERANCE if name.startswith("bench") else TOLERANCE)} for name, rows in res.samples.items()}
    restarts = {m: [{**d, "status": describe_status(d["status"])} for d in s.deaths] for m, s in servers.items()}
    result["accounting_rows"] = accounting_rows(result)
    result["restarts"] = restarts
    summary: dict[str, Any] = {"seed": seed, "duration_s": duration, "injected": len(fired),
                               "scheduled": len(events), "hang_s": HANG_S, "leak_mb": LEAK_MB, "gap_s": list(GAP_S)}
    for m in models:
        a = attribution[m]
        summary[m] = {"requests": a["requests"], "failed": a["failed"], "attributed": sum(a["attributed"].values()),
                      "unattributed": a["unattributed"], "injected": a["injected"],
                      "serving_at_end": at_end[m] is not None, "restarts": len(restarts[m])}
    summary["growth"] = {name: {col: v["grows"] for col, v in r["growth"].items() if isinstance(v, dict)}
                         for name, r in resources.items()}
    summary["any_growth"] = any(any(v.values()) for v in summary["growth"].values())
    summary["unattributed_total"] = sum(attribution[m]["unattributed"] for m in models)
    summary["all_serving_at_end"] = all(v is not None for v in at_end.values())
    for f in fired:
        f["at_s"] = round(f["sent"] - run_t0, 3)
    return {"raw": {"run": result, "schedule": events, "fired": fired, "attribution": attribution,
                    "resources": resources, "serving_at_end_s": at_end, "per_second": per_second(records, run_t0,
                                                                                                 list(models)),
                    "timeline_records": len(records)},
            "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    out = {}
    for m in models:
        e = s.get(m)
        if e:
            out[m] = (f"{fmt(e['failed'])} failed = {fmt(e['attributed'])} attributed + {fmt(e['unattributed'])} "
                      f"unattributed; {fmt(e['injected'])} faults; {'serving' if e['serving_at_end'] else '**down**'} at end")
    grows = [f"{name} {col}" for name, g in s["growth"].items() for col, v in g.items() if v]
    return out, (f"{fmt(s['duration_s'])} s, seed {s['seed']}; growth: " + (", ".join(grows) if grows else "none"))


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s, raw = sc["summary"], sc["raw"]
    d.p(f"All servers side by side under the mixed workload for {fmt(s['duration_s'])} s, while a chaos schedule "
        f"(seed **{s['seed']}**: `webmodels bench --scenarios soak --duration {fmt(s['duration_s'], 0)} --seed "
        f"{s['seed']}` replays it) fired {s['injected']} faults, one every {s['gap_s'][0]:g}–{s['gap_s'][1]:g} s at a "
        f"random server: crash, segfault, hang ({s['hang_s']} s), leak ({s['leak_mb']} MiB), raise, and `kill --worker` "
        "(master models) or `kill --process` (single-process models). The bench restarts a dead server at once (no "
        "back-off: that would measure the supervisor's policy, not the model). A failed user request is attributed "
        "to the latest fault on its server sent before it ended and not yet recovered from when it was sent "
        "(loadtest/accounting's recovery rule).")
    rows = []
    for m in REPORT_MODELS:
        a = raw["attribution"].get(m)
        if not a:
            continue
        rows.append([m, a["requests"], a["ok"], a["failed"], ", ".join(f"{k} {v}" for k, v in a["attributed"].items())
                     or "–", a["unattributed"], ", ".join(f"{k} {v}" for k, v in a["injected_by_fault"].items()),
                     len((raw["run"].get("restarts") or {}).get(m, [])),
                     "yes" if raw["serving_at_end_s"].get(m) is not None else "**no**"])
    d.table(["model", "requests", "ok", "failed", "attributed to", "unattributed", "faults injected",
             "process restarts", "serving at end"], rows)
    examples = [(m, x) for m in REPORT_MODELS for x in (raw["attribution"].get(m) or {}).get("unattributed_examples", [])]
    if examples:
        d.note("Unattributed failures (first few): " + "; ".join(
            f"{m} {x['name']} {x['error']} after {fmt(x['ms'])} ms" for m, x in examples))
    d.p("Growth over the run: the masters' and the supervisor's (the bench process's) file descriptors, threads, "
        "children and RSS, sampled once a second; first → last quarter (medians) and the least-squares slope per "
        "minute. A change beyond the tolerance is growth.")
    grow_rows = []
    for name, r in raw["resources"].items():
        for col in RESOURCE_COLS:
            g = r["growth"].get(col)
            if isinstance(g, dict):
                grow_rows.append([name, col, g["first"], g["last"], g["delta"], g["slope_per_min"],
                                  "**grows**" if g["grows"] else "flat"])
    d.table(["process", "resource", "first quarter", "last quarter", "change", "slope / min", "verdict"], grow_rows)
    if (img := chart(c, sc)):
        d.img(img, "soak timeline")


MARKERS = {"crash": "X", "segfault": "P", "hang": "v", "leak": "s", "raise": "D", "kill --worker": "*",
           "kill --process": "*"}


@guard
def chart(c: Charts, sc: dict[str, Any]) -> str | None:
    raw = sc["raw"]
    fig, ax = c.plt.subplots(figsize=(11, 4.6))
    for m in REPORT_MODELS:
        pts = raw["per_second"].get(m)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m, color=COLORS.get(m), linewidth=1.2)
        ok_at = {p[0]: p[1] for p in pts}
        for kind, marker in MARKERS.items():
            shots = [f for f in raw["fired"] if f["model"] == m and f["fault"] == kind]
            if shots:
                ax.scatter([f["at_s"] for f in shots], [ok_at.get(int(f["at_s"]), 0) for f in shots], marker=marker,
                           s=46, color=COLORS.get(m), edgecolors="black", linewidths=0.6, zorder=3)
    for kind, marker in MARKERS.items():
        if kind != "kill --process":
            ax.scatter([], [], marker=marker, color="white", edgecolors="black", label=kind if kind != "kill --worker"
                       else "kill", s=46)
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("ok requests / s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Soak: successful requests per second per server; markers = injected faults (seed {sc['summary']['seed']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, ncol=2, loc="lower left")
    fig.subplots_adjust(bottom=0.15)
    c.footer(fig, f"{fmt(sc['summary']['duration_s'])} s, {sc['summary']['injected']} faults, mixed load")
    return c.save(fig, "soak.png")


SCENARIO = Scenario(
    name="soak", row="soak (chaos)", title="Soak: chaos under mixed load, every failure attributed",
    why="a model's failures should all be explained by the faults it suffered, and surviving them must not leak",
    run=run, section=section, cells=cells, quick_s=35, full_s=310, default=False,
    whole_duration=True)
