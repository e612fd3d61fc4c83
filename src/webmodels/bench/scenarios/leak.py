"""Leaks: memory over time."""

from __future__ import annotations

from typing import Any

from ..kit import Bench, mb, series, side_by_side, unpack_samples
from ..report import Charts, Doc, chart_timeline, fmt
from . import Cells, Scenario


def run(bench: Bench) -> dict[str, Any]:
    """A /fault/leak stream: memory over time per model; prefork --max-requests bounds it."""
    p = bench.plan
    users = p.pick(4, 6)
    duration = p.pick(3.0, max(2 * p.step, 12.0))
    every = p.pick(0.2, 0.4)
    leak_mb = p.pick(4, 8)
    runs = {"plain": side_by_side(bench, "leak · all models", {}, users, duration, "io", io_ms=5,
                                  fault="leak", fault_every=every, leak_mb=leak_mb)}
    if "prefork" in p.models and bench.native:
        runs["recycled"] = side_by_side(
            bench, "leak · prefork --max-requests", {"prefork": ["--max-requests", str(p.pick(150, 300)),
                                                                 "--max-requests-jitter", "50"]},
            users, duration, "io", models=("prefork",), io_ms=5, fault="leak", fault_every=every, leak_mb=leak_mb)
    summary: dict[str, Any] = {"leak_mb_each": leak_mb, "fault_every_s": every}
    for name, r in runs.items():
        for m, samples in r["samples"].items():
            key = m if name == "plain" else f"{m} --max-requests"
            uss = series(samples, "totals", "uss")
            summary[key] = {"uss_start_mb": mb(uss[0][1]) if uss else None,
                            "uss_end_mb": mb(uss[-1][1]) if uss else None,
                            "uss_peak_mb": mb(max(v for _, v in uss)) if uss else None,
                            "leaked_mb": round(((r["accounting_rows"].get(m) or {}).get("injected") or 0) * leak_mb, 1)}
            fin = (r["final_stats"].get(m) or {}).get("counters", {})
            if m == "prefork":
                summary[key]["recycled"] = (fin.get("worker_exits") or {}).get("recycled")
    return {"raw": {"runs": runs}, "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    out = {m: f"USS {fmt(s[m]['uss_start_mb'])} → {fmt(s[m]['uss_end_mb'])} MiB" for m in models if m in s}
    if "prefork --max-requests" in s:
        out["prefork"] = out.get("prefork", "") + (f"; with --max-requests: end "
                                                   f"{fmt(s['prefork --max-requests']['uss_end_mb'])} MiB")
    return out, f"{fmt(s.get('leak_mb_each'))} MiB leaked every {fmt(s.get('fault_every_s'), 2)} s"


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"Side by side under light `/io?ms=5` load; the injector leaks {s['leak_mb_each']} MiB into each server "
        f"every {s['fault_every_s']} s (`/fault/leak`, touched pages). The `--max-requests` run is prefork alone "
        "with worker recycling: a leak dies with the worker that holds it.")
    d.table(["server", "USS start MiB", "USS end MiB", "USS peak MiB", "leaked (injected) MiB", "workers recycled"],
            [[k, v["uss_start_mb"], v["uss_end_mb"], v["uss_peak_mb"], v["leaked_mb"], v.get("recycled", "–")]
             for k, v in s.items() if isinstance(v, dict)])
    runs = sc["raw"]["runs"]
    lines = []
    for name, run in runs.items():
        for m, samples in run["samples"].items():
            label = m if name == "plain" else f"{m} --max-requests"
            lines.append((label, [[p["t"], p["totals"]["uss"] / 2**20] for p in unpack_samples(samples)
                                  if p.get("up")]))
    if (img := chart_timeline(c, sc, "leak.png", "Memory (USS, whole tree) while leaking", "MiB", lines,
                              f"runs of {fmt(runs['plain']['duration_s'])} s, {s['leak_mb_each']} MiB every "
                              f"{s['fault_every_s']} s; 1 run each")):
        d.img(img, "leak")


SCENARIO = Scenario(
    name="leak", row="leaks", title="Leaks: memory over time",
    why="a leak lives as long as its process: only a process can be thrown away (recycled) to free it",
    run=run, section=section, cells=cells, quick_s=12, full_s=30)
