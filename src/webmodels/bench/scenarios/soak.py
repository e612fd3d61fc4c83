"""Soak: every server under mixed load while a seeded chaos schedule breaks them; every failure attributed.

All servers run side by side under a mixed Locust load for `--duration` seconds (default 300; 30 with
--quick) while Locust's injector fires the seeded chaos schedule (webmodels.chaos.seeded: `--fault chaos
--chaos-seed N`; the seed is printed and the same seed replays the same faults): every 1–3 s one fault at one
server — crash, segfault, hang (2 s), leak (4 MiB), raise, and a kill: kill-worker for the models with a
master, kill-process for the others. The bench restarts a dead server at once (no back-off): under a fault
every few seconds a doubling back-off would measure the supervisor's policy, not the model.

Attribution, with the lab's accounting: a fault takes effect when it is sent, or when its request ends for
the kinds that end a process; its server has recovered when the first user request *sent* after that
succeeds (accounting.RecoveryWatch, replayed over Locust's per-request timeline). A failed user request
belongs to the latest fault on its server sent before the request ended and not yet recovered from when the
request was sent. A failure no fault explains is *unattributed*: the goal is 0.

Growth: the stats sampler reads each master's fds, threads, children and RSS once a second, and the bench's
own (it is the supervisor here); the report gives the least-squares slope per minute and the change from the
first to the last quarter of the run (medians), which must stay within a small tolerance.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from ... import chaos, launch
from ...faults import BY_KIND
from ...supervisor import describe_status
from ..kit import (MASTER_MODELS, Bench, accounting_rows, native_only, ok_rate, second_zero, slope, start_all,
                   stop_all)
from ..locustrun import RecoveryWatch, injection_key, read_timeline
from ..report import COLORS, REPORT_MODELS, Charts, Doc, fmt, guard
from ..runner import StatsSampler, get_stats
from . import Cells, Scenario

HANG_S = 2
LEAK_MB = 4
BENCH = "bench (supervisor)"
RESOURCES = ("fds", "threads", "children", "rss_mib")
# growth tolerated between the first and the last quarter (medians), per resource
TOLERANCE = {"fds": 2, "threads": 2, "children": 0, "rss_mib": 10.0}
BENCH_TOLERANCE = {"fds": 4, "threads": 4, "children": 0, "rss_mib": 30.0}


def run(bench: Bench) -> dict[str, Any]:
    """All servers under mixed load for the soak's duration while Locust fires the seeded chaos schedule."""
    if (skip := native_only(bench, "chaos (the bench must restart what it breaks)")):
        return skip
    p = bench.plan
    duration = p.duration or p.pick(30.0, 300.0)
    seed = p.seed if p.seed is not None else 1
    scheduled = list(chaos.seeded(seed, p.models, duration))
    servers = {m: bench.server(m, restart=True) for m in p.models}
    start_all(servers)
    timeline = bench.workdir / f"soak-timeline-{seed}"
    try:
        urls = {m: s.url for m, s in servers.items()}
        with StatsSampler(urls, interval=1.0, local={BENCH: os.getpid()}) as sampler:
            result = bench.locust(urls, p.pick(3, 4), duration, "mixed", f"soak · {duration:.0f} s · seed {seed}",
                                  extra_args=["--timeline", str(timeline)], io_ms=20, cpu_ms=2, fault="chaos",
                                  chaos_seed=seed, hang_s=HANG_S, leak_mb=LEAK_MB)
        serving = {m: launch.wait_accepting(s.port, 10) and get_stats(s.url, 5) is not None for m, s in servers.items()}
    finally:
        stop_all(servers)
    records = read_timeline(timeline)
    t0 = result["accounting_run"].get("started_at") or result["started_at"]  # when the schedule started
    fired = [{"model": r["server"], "fault": r["fault"], "at_s": round(r["t"] - t0, 3), "sent": r["t"],
              "effect": r["t"] + (r["ms"] / 1000 if BY_KIND[r["fault"]].ends_process else 0), "outcome": r["error"]}
             for r in records if r.get("fault")]
    attribution = attribute(records, fired, list(p.models))
    resources = {}
    for name, key in ({f"{m} master": m for m in p.models if m in MASTER_MODELS} | {BENCH: BENCH}).items():
        rows = resource_rows(sampler.samples[key])
        resources[name] = {"cols": ["t", *RESOURCES], "rows": rows,
                           "growth": growth(rows, BENCH_TOLERANCE if key == BENCH else TOLERANCE)}
    result["accounting_rows"] = accounting_rows(result)
    result["restarts"] = {m: [{**d, "status": describe_status(d["status"])} for d in s.deaths]
                          for m, s in servers.items()}
    summary: dict[str, Any] = {"seed": seed, "duration_s": duration, "injected": len(fired),
                               "scheduled": len(scheduled), "hang_s": HANG_S, "leak_mb": LEAK_MB,
                               "gap_s": list(chaos.GAP_S)}
    for m in p.models:
        a = attribution[m]
        summary[m] = {"requests": a["requests"], "failed": a["failed"], "attributed": sum(a["attributed"].values()),
                      "unattributed": a["unattributed"], "injected": a["injected"], "serving_at_end": serving[m],
                      "restarts": len(result["restarts"][m])}
    summary["growth"] = {name: {col: v["grows"] for col, v in r["growth"].items() if isinstance(v, dict)}
                         for name, r in resources.items()}
    summary["any_growth"] = any(any(v.values()) for v in summary["growth"].values())
    summary["unattributed_total"] = sum(attribution[m]["unattributed"] for m in p.models)
    summary["all_serving_at_end"] = all(serving.values())
    return {"raw": {"run": result, "schedule": [s._asdict() for s in scheduled], "fired": fired,
                    "attribution": attribution, "resources": resources, "serving_at_end": serving,
                    "timeline_records": len(records)},
            "summary": summary}


def recover(fired: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """Set each fault's `recovered_at` (None: never) by the accounting's rule, replayed in time order."""
    watch, by_key = RecoveryWatch(), {}
    events = [(r["t"], 0, r["server"]) for r in records if r["class"] == "ok"]  # a success, when it was sent
    events += [(f["effect"], 1, i) for i, f in enumerate(fired)]  # at equal times the success comes first
    for f in fired:
        f["recovered_at"] = None
    for t, is_fault, what in sorted(events):
        if is_fault:
            f = fired[what]
            by_key.setdefault((f["model"], injection_key(t)), []).append(f)
            first = watch.on_injected(f["model"], t)
            answered = [] if first is None else [(injection_key(t), first)]
            server = f["model"]
        else:
            answered, server = watch.on_success(what, t), what
        for key, first in answered:
            for f in by_key.get((server, key), []):
                f["recovered_at"] = first


def attribute(records: list[dict[str, Any]], fired: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Attribute every failed user request to a fault on its server (the rule in the module docstring)."""
    recover(fired, records)
    per: dict[str, Any] = {}
    for m in models:
        mine = [r for r in records if r["server"] == m and r["class"] != "expected"]
        injections = sorted((f for f in fired if f["model"] == m), key=lambda f: f["sent"])
        by_fault: dict[str, int] = {}
        unattributed = []
        for r in mine:
            if r["ok"]:
                continue
            end = r["t"] + (r["ms"] or 0) / 1000
            cause = next((f for f in reversed(injections) if f["sent"] <= end and
                          (f["recovered_at"] is None or r["t"] <= f["recovered_at"])), None)
            if cause is None:
                unattributed.append({k: r[k] for k in ("t", "name", "error", "ms")})
            else:
                by_fault[cause["fault"]] = by_fault.get(cause["fault"], 0) + 1
        ok = sum(1 for r in mine if r["ok"])
        per[m] = {"requests": len(mine), "ok": ok, "failed": len(mine) - ok, "attributed": by_fault,
                  "unattributed": len(unattributed), "unattributed_examples": unattributed[:5],
                  "injected": len(injections),
                  "injected_by_fault": {k: sum(1 for f in injections if f["fault"] == k)
                                        for k in sorted({f["fault"] for f in injections})},
                  "never_recovered": sum(1 for f in injections if f["recovered_at"] is None)}
    return per


def resource_rows(samples: list[dict[str, Any]]) -> list[list[float]]:
    """[[t, fds, threads, children, RSS MiB], ...] of the sampled root process (a master, or the bench)."""
    return [[s["t"], r["fds"], r["threads"], r["children"], round(r["rss"] / 2**20, 2)]
            for s in samples if (r := s.get("root"))]


def growth(samples: list[list[float]], tolerance: dict[str, float]) -> dict[str, Any]:
    """Per resource: first/last-quarter medians, their difference, the slope per minute, and a verdict."""
    if len(samples) < 8:
        return {"too_few_samples": len(samples)}
    q = max(2, len(samples) // 4)
    ts = [s[0] for s in samples]
    out: dict[str, Any] = {}
    for i, col in enumerate(RESOURCES, start=1):
        ys = [s[i] for s in samples]
        first, last = statistics.median(ys[:q]), statistics.median(ys[-q:])
        sl = slope(ts, ys)
        out[col] = {"first": first, "last": last, "delta": round(last - first, 2),
                    "slope_per_min": round(sl * 60, 3) if sl is not None else None,
                    "grows": last - first > tolerance[col]}
    return out


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    out = {m: (f"{fmt(e['failed'])} failed = {fmt(e['attributed'])} attributed + {fmt(e['unattributed'])} "
               f"unattributed; {fmt(e['injected'])} faults; {'serving' if e['serving_at_end'] else '**down**'} at end")
           for m in models if (e := s.get(m))}
    grows = [f"{name} {col}" for name, g in s["growth"].items() for col, v in g.items() if v]
    return out, (f"{fmt(s['duration_s'])} s, seed {s['seed']}; growth: " + (", ".join(grows) if grows else "none"))


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s, raw = sc["summary"], sc["raw"]
    d.p(f"All servers side by side under the mixed workload for {fmt(s['duration_s'])} s, while Locust's injector "
        f"fired a chaos schedule (seed **{s['seed']}**: `webmodels bench --scenarios soak --duration "
        f"{fmt(s['duration_s'], 0)} --seed {s['seed']}` replays it): {s['injected']} faults, one every "
        f"{s['gap_s'][0]:g}–{s['gap_s'][1]:g} s, each server in turn: crash, segfault, hang ({s['hang_s']} s), leak "
        f"({s['leak_mb']} MiB), raise, and kill-worker (master models) or kill-process (single-process models). "
        "The bench restarts a dead server at once (no back-off: that would measure the supervisor's policy, not the "
        "model). A failed user request is attributed to the latest fault on its server sent before it ended and not "
        "yet recovered from when it was sent (the accounting's recovery rule).")
    rows = [[m, a["requests"], a["ok"], a["failed"], ", ".join(f"{k} {v}" for k, v in a["attributed"].items()) or "–",
             a["unattributed"], ", ".join(f"{k} {v}" for k, v in a["injected_by_fault"].items()),
             len(raw["run"]["restarts"].get(m, [])), "yes" if raw["serving_at_end"].get(m) else "**no**"]
            for m in REPORT_MODELS if (a := raw["attribution"].get(m))]
    d.table(["model", "requests", "ok", "failed", "attributed to", "unattributed", "faults injected",
             "process restarts", "serving at end"], rows)
    examples = [(m, x) for m in REPORT_MODELS for x in (raw["attribution"].get(m) or {}).get("unattributed_examples", [])]
    if examples:
        d.note("Unattributed failures (first few): " + "; ".join(
            f"{m} {x['name']} {x['error']} after {fmt(x['ms'])} ms" for m, x in examples))
    d.p("Growth over the run: the masters' and the supervisor's (the bench process's) file descriptors, threads, "
        "children and RSS, sampled once a second; first → last quarter (medians) and the least-squares slope per "
        "minute. A change beyond the tolerance is growth.")
    d.table(["process", "resource", "first quarter", "last quarter", "change", "slope / min", "verdict"],
            [[name, col, g["first"], g["last"], g["delta"], g["slope_per_min"], "**grows**" if g["grows"] else "flat"]
             for name, r in raw["resources"].items() for col in RESOURCES
             if isinstance(g := r["growth"].get(col), dict)])
    if (img := chart(c, sc)):
        d.img(img, "soak timeline")


MARKERS = {"crash": "X", "segfault": "P", "hang": "v", "leak": "s", "raise": "D", "kill-worker": "*",
           "kill-process": "*"}


@guard
def chart(c: Charts, sc: dict[str, Any]) -> str | None:
    raw = sc["raw"]
    fig, ax = c.plt.subplots(figsize=(11, 4.6))
    for m in REPORT_MODELS:
        if not (pts := ok_rate(raw["run"], m)):
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m, color=COLORS.get(m), linewidth=1.2)
        ok_at = {p[0]: p[1] for p in pts}
        zero = second_zero(raw["run"])
        for kind, marker in MARKERS.items():
            if (shots := [f for f in raw["fired"] if f["model"] == m and f["fault"] == kind]):
                ax.scatter([f["sent"] - zero for f in shots], [ok_at.get(int(f["sent"] - zero), 0) for f in shots],
                           marker=marker, s=46, color=COLORS.get(m), edgecolors="black", linewidths=0.6, zorder=3)
    for kind, marker in MARKERS.items():
        if kind != "kill-process":  # one legend entry for both kills: the same marker
            ax.scatter([], [], marker=marker, color="white", edgecolors="black", s=46,
                       label="kill" if kind == "kill-worker" else kind)
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
