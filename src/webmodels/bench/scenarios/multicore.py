"""Multi-core: /cpu at rising concurrency, each model alone on every core, `/` probed beside it."""

from __future__ import annotations

from typing import Any

from .. import locustrun
from ..kit import HYBRIDS, Bench, alone, med, pct
from ..report import Charts, Doc, chart_sweep, fmt
from . import Cells, Scenario

FLAGS = {"prefork": ["--workers", "4"], "threadpool": ["--threads", "32"]}  # hybrids: their lab defaults


def run(bench: Bench) -> dict[str, Any]:
    """/cpu at rising concurrency, each model alone on every core, with `/` latency probed from the side."""
    p = bench.plan
    levels = p.pick([1, 4], [1, 2, 4, 8])
    cpu_ms = 10
    rows = []
    runs = {}
    for m in p.models:
        for u in levels:
            r = alone(bench, m, FLAGS.get(m, []), f"multi-core · /cpu · {m} · {u} users", u, p.step, "cpu",
                      cpus=bench.pin.all, probe="/", cpu_ms=cpu_ms)
            ss = locustrun.server_stats(r, m)
            rows.append({"model": m, "users": u, "rps": ss.get("rps"), "p50_ms": ss.get("p50_ms"),
                         "p99_ms": ss.get("p99_ms"), "probe_p50_ms": med(r["probe_ms"]),
                         "probe_p99_ms": pct(r["probe_ms"], 99), "generator_bound": r["generator_bound"]})
            runs[f"{m}@{u}"] = r
    summary: dict[str, Any] = {"cpu_ms": cpu_ms, "cores": len(bench.pin.all), "levels": levels}
    top = max(levels)
    for m in p.models:
        by = {r["users"]: r for r in rows if r["model"] == m}
        if by.get(1) and by.get(top) and by[1]["rps"]:
            summary[f"{m} speedup {top} vs 1 users"] = round((by[top]["rps"] or 0) / by[1]["rps"], 2)
        summary[f"{m} / p99 at {top} users (ms)"] = by.get(top, {}).get("probe_p99_ms")
    return {"raw": {"rows": rows, "runs": runs}, "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    top = max(s["levels"])
    return ({m: (f"×{fmt(s.get(f'{m} speedup {top} vs 1 users'), 2)} rps from 1→{top} users; `/` p99 "
                 f"{fmt(s.get(f'{m} / p99 at {top} users (ms)'))} ms") for m in models},
            f"/cpu?ms={s['cpu_ms']} on {s['cores']} cores")


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    hybrids = [h for h in HYBRIDS if h in results["settings"]["models"]]
    d.p(f"Each model alone, allowed on all {s['cores']} cores (Locust shares the last one: its load here is light), "
        f"`/cpu?ms={s['cpu_ms']}` at rising users; a side probe measures `GET /` latency every 50 ms during the run. "
        "Prefork has 4 workers, the pool 32 threads." + (f" {' and '.join(hybrids)} run their lab defaults (2 workers)."
                                                       if hybrids else ""))
    rows = sc["raw"]["rows"]
    d.table(["model", "users", "rps", "p50 ms", "p99 ms", "`/` probe p50 ms", "`/` probe p99 ms", "generator-bound"],
            [[r["model"], r["users"], r["rps"], r["p50_ms"], r["p99_ms"], r["probe_p50_ms"], r["probe_p99_ms"],
              "**yes**" if r["generator_bound"] else "no"] for r in rows])
    if (img := chart_sweep(c, "multicore.png", f"/cpu?ms={s['cpu_ms']}: throughput, and the latency of GET / beside it",
                           rows, "users", [("rps", "requests / s (/cpu)"), ("probe_p99_ms", "p99 of GET / (ms, log)")],
                           f"one run of {results['settings']['step_s']} s per point", logy=(False, True))):
        d.img(img, "multi-core")


SCENARIO = Scenario(
    name="multicore", row="multi-core", title="Multi-core: /cpu at rising concurrency",
    why="the GIL lets one thread run Python at a time, and a loop or gevent's hub is one thread: only processes (or a "
        "loop per process) use every core",
    run=run, section=section, cells=cells, quick_s=22, full_s=100)
