"""Concurrency for I/O: /io?ms=50 at rising users, every model side by side."""

from __future__ import annotations

from typing import Any

from .. import locustrun
from ..kit import HYBRIDS, Bench, side_by_side
from ..report import Charts, Doc, chart_sweep, fmt, in_words
from . import Cells, Scenario


def run(bench: Bench) -> dict[str, Any]:
    """/io?ms=50 at rising users, the models side by side: rps and p50/p99."""
    p = bench.plan
    levels = p.pick([4, 64], [1, 8, 32, 64, 128])
    rows, runs = [], {}
    for u in levels:
        r = side_by_side(bench, f"I/O · /io?ms=50 · {u} users per server · all models", {}, u, p.step, "io",
                         io_ms=50)
        for m in p.models:
            ss = locustrun.server_stats(r, m)
            ok = ss.get("requests", 0) - ss.get("failures", 0)
            rows.append({"model": m, "users": u, "rps": ss.get("rps"),
                         "ok_rps": round((ss.get("rps") or 0) * ok / ss["requests"], 1) if ss.get("requests") else 0.0,
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


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    top = max(s["levels"])
    return ({m: (f"{fmt(s[f'{m} at {top} users']['ok_rps'])} ok rps, p99 {fmt(s[f'{m} at {top} users']['p99_ms'])} ms")
             for m in models if f"{m} at {top} users" in s}, f"/io?ms=50 at {top} users per server")


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    models = results["settings"]["models"]
    hybrids = [h for h in HYBRIDS if h in models]
    d.p(f"The {in_words(len(models))} servers side by side on the server core, the same number of users each, "
        "`/io?ms=50`. Default sizes: prefork 4 workers (4 requests at a time), the pool 32 threads (+32 queued "
        "connections, then a fast 503), the loop unbounded" + (f"; {' and '.join(hybrids)}: the lab defaults "
                                                              "(2 workers)" if hybrids else "")
        + ". Failures are mostly the pool's 503s.")
    rows = sc["raw"]["rows"]
    d.table(["model", "users", "ok rps", "failures", "p50 ms", "p99 ms", "generator-bound"],
            [[r["model"], r["users"], r["ok_rps"], r["failures"], r["p50_ms"], r["p99_ms"],
              "**yes**" if r["generator_bound"] else "no"] for r in rows])
    if (img := chart_sweep(c, "io.png", "/io?ms=50 at rising users per server", rows, "users",
                           [("ok_rps", "ok requests / s"), ("p99_ms", "p99 latency (ms, log)")],
                           f"one run of {results['settings']['step_s']} s per point", logx=True, logy=(False, True))):
        d.img(img, "io")


SCENARIO = Scenario(
    name="io", row="concurrency for I/O", title="Concurrency for I/O: /io?ms=50 at rising users",
    why="a waiting request pins a worker or a thread, but costs a loop only a parked task",
    run=run, section=section, cells=cells, quick_s=8, full_s=40)
