"""Over-threading: thread-pool size sweep on a mixed load, and fairness per connection at each size."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .. import rawclient
from ..kit import Bench, alone, ctx_per_req, mb, native_only, peak
from ..report import Charts, Doc, chart_sweep, fmt
from . import Cells, Scenario


def run(bench: Bench) -> dict[str, Any]:
    """Thread-pool size sweep on a mixed load: where more threads stop helping; who gets served."""
    if "threadpool" not in bench.plan.models:
        return {"skipped": "threadpool not among --models", "raw": {}, "summary": {}}
    if (skip := native_only(bench, "the thread sweep")):
        return skip
    p = bench.plan
    sizes = p.pick([4, 32, 256], [2, 8, 32, 128, 512])
    users = p.pick(48, 96)
    fair_s = p.pick(2.0, 5.0)
    rows, runs = [], {}
    for t in sizes:
        flags = ["--threads", str(t), "--queue", "1024"]
        r = alone(bench, "threadpool", flags,
                  f"over-threading · threadpool --threads {t} · mixed", users, p.step, "mixed", io_ms=50, cpu_ms=2)
        agg = r["stats"].get("Aggregated", {})
        reqs = ((r["after"] or {}).get("counters", {}).get("requests", 0)
                - (r["before"] or {}).get("counters", {}).get("requests", 0))
        # Fairness: the same number of keep-alive connections, each sending GET / back to back, counted one by
        # one (a fresh server: the Locust run's connections are gone)
        bench.progress.step(f"over-threading · fairness · {users} connections · --threads {t}", fair_s + 0.5)
        with bench.server("threadpool", flags) as srv:
            u = urlsplit(srv.url)
            fair = rawclient.fairness(u.hostname or "127.0.0.1", u.port or 80, users, fair_s)
        rows.append({"threads": t, "rps": agg.get("rps"), "p50_ms": agg.get("p50_ms"), "p99_ms": agg.get("p99_ms"),
                     "failures": agg.get("failures"), "generator_bound": r["generator_bound"],
                     "involuntary_per_request": ctx_per_req(r, reqs, "involuntary"),
                     "voluntary_per_request": ctx_per_req(r, reqs, "voluntary"),
                     "rss_mb": mb(peak(r["samples"]["threadpool"], "rss")), "fairness": fair})
        runs[str(t)] = r
    best = max(rows, key=lambda r: r["rps"] or 0)
    return {"raw": {"rows": rows, "runs": runs},
            "summary": {"users": users, "best_threads": best["threads"], "best_rps": best["rps"],
                        "fairness_s": fair_s,
                        "rows": {str(r["threads"]): {"rps": r["rps"], "p99_ms": r["p99_ms"],
                                                     "per_connection": _mmm(r["fairness"])} for r in rows}}}


def _mmm(f: dict[str, Any] | None) -> list[Any] | None:
    return [f["min"], f["median"], f["max"]] if f else None


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    text = f"best at {s['best_threads']} threads ({fmt(s['best_rps'])} rps); " + \
        ", ".join(f"{t}: {fmt(v['rps'])}" for t, v in s["rows"].items())
    if any(v.get("per_connection") for v in s["rows"].values()):
        text += "; per connection min/median/max " + ", ".join(
            f"{t}: {'/'.join(fmt(x) for x in v['per_connection'])}" for t, v in s["rows"].items()
            if v.get("per_connection"))
    return {"threadpool": text}, "mixed load"


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"The thread pool alone on the server core with `--threads N --queue 1024`, {s['users']} users on the mixed "
        "workload (4 hello : 3 `/io?ms=50` : 2 `/bytes` : 1 `/cpu?ms=2`).")
    rows = sc["raw"]["rows"]
    d.table(["threads", "rps", "p50 ms", "p99 ms", "failures", "involuntary ctx / req", "RSS MiB", "generator-bound"],
            [[r["threads"], r["rps"], r["p50_ms"], r["p99_ms"], r["failures"], r["involuntary_per_request"], r["rss_mb"],
              "**yes**" if r["generator_bound"] else "no"] for r in rows])
    fair = [r for r in rows if r.get("fairness")]
    if fair:
        d.p(f"**Fairness**: {s['users']} keep-alive connections (a raw asyncio client in the bench, not Locust) each send "
            f"`GET /` back to back for {fmt(s.get('fairness_s'))} s against a fresh pool of each size; completions are "
            "counted per connection. Totals hide a pool that serves a few connections and refuses or starves the "
            "rest; min / median shows it (1.0 = perfectly even).")
        d.table(["threads", "connections", "min", "median", "max", "min / median", "starved (0 done)", "total",
                 "refused (non-200)", "reconnects", "errors"],
                [[r["threads"], f["connections"], f["min"], f["median"], f["max"], f["min_over_median"], f["starved"],
                  f["total"], f["refused"], f["reconnects"], f["errors"]] for r in fair for f in [r["fairness"]]])
    if (img := chart_sweep(c, "overthreading.png", "Thread-pool size sweep (mixed load)", rows, "threads",
                           [("rps", "requests / s"), ("p99_ms", "p99 ms")], f"one run of {results['settings']['step_s']} s "
                           "per size", series_key=None, logx=True)):
        d.img(img, "over-threading")


SCENARIO = Scenario(
    name="overthreading", row="over-threading", title="Over-threading: thread-pool size sweep",
    why="past the cores and the waits, more threads add switches and GIL contention, not throughput",
    run=run, section=section, cells=cells, quick_s=17, full_s=65)
