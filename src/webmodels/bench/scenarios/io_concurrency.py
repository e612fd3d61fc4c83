"""Concurrency for I/O: /io?ms=50 at rising users, every model side by side; and how many waits overlap.

Locust's figures (ok rps, p99) depend on how fast the machine lets Locust go. The second measure does not: N
connections per model each send `GET /io?ms=2000` at the same moment (a raw client, every model at once), and
the row counts the answers that came back within 3 s — the waits that overlapped. A second round would take
4 s, so the count is how many requests the model lets wait at once: its workers, its threads, or all of them
(a whole second of margin: on a loaded machine 100 answers of one process took 1.6 s with a 1 s wait).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .. import locustrun, rawclient
from ..kit import HYBRIDS, Bench, side_by_side, start_all, stop_all
from ..report import REPORT_MODELS, Charts, Doc, chart_sweep, fmt, in_words
from . import Cells, Scenario

WAIT_MS = 2000
WITHIN_S = 3.0  # answers after this were not waiting together with the first ones (they take 2 × WAIT_MS)


def at_once(bench: Bench, n: int) -> dict[str, Any]:
    """N GET /io?ms=WAIT_MS per model sent at once (fresh servers, default sizes): answered within WITHIN_S."""
    servers = {m: bench.server(m) for m in bench.plan.models}
    bench.progress.step(f"I/O · {n} × /io?ms={WAIT_MS} at once · all models", WITHIN_S + 2)
    start_all(servers)
    try:
        targets = {m: rawclient.address(s.url) for m, s in servers.items()}
        return asyncio.run(rawclient.burst(targets, n, rawclient.get(f"/io?ms={WAIT_MS}"), WITHIN_S))
    finally:
        stop_all(servers)


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
    n = p.pick(100, 200)
    burst = at_once(bench, n)
    summary: dict[str, Any] = {"io_ms": 50, "levels": levels,
                               "at_once": {"requests": n, "wait_ms": WAIT_MS, "within_s": WITHIN_S, **burst}}
    top = max(levels)
    for m in p.models:
        row = next((r for r in rows if r["model"] == m and r["users"] == top), {})
        summary[f"{m} at {top} users"] = {"ok_rps": row.get("ok_rps"), "p50_ms": row.get("p50_ms"),
                                          "p99_ms": row.get("p99_ms"), "failures": row.get("failures")}
    return {"raw": {"rows": rows, "runs": runs}, "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    top = max(s["levels"])
    burst = s.get("at_once") or {}
    out = {}
    for m in models:
        if f"{m} at {top} users" not in s:
            continue
        e = s[f"{m} at {top} users"]
        out[m] = f"{fmt(e['ok_rps'])} ok rps, p99 {fmt(e['p99_ms'])} ms"
        if m in burst:
            out[m] += f"; {fmt(burst[m]['answered'])} of {fmt(burst['requests'])} waits at once"
    conditions = f"/io?ms=50 at {top} users per server"
    if burst:
        conditions += (f"; waits at once: {fmt(burst['requests'])} × /io?ms={burst['wait_ms']} sent together, "
                       f"answered within {fmt(burst['within_s'])} s")
    return out, conditions


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    models = results["settings"]["models"]
    hybrids = [h for h in HYBRIDS if h in models]
    d.p(f"The {in_words(len(models))} servers side by side on the server core, the same number of users each, "
        "`/io?ms=50`. Default sizes: prefork 4 workers (4 requests at a time), the pool 32 threads (+32 queued "
        "connections, then a fast 503), the loop unbounded, green threads 1000 greenlets (the pool's blocking code, "
        "but a wait is a switch to another greenlet)" + (f"; {' and '.join(hybrids)}: the lab defaults (2 workers)"
                                                        if hybrids else "")
        + ". Failures are mostly the pool's 503s.")
    rows = sc["raw"]["rows"]
    d.table(["model", "users", "ok rps", "failures", "p50 ms", "p99 ms", "generator-bound"],
            [[r["model"], r["users"], r["ok_rps"], r["failures"], r["p50_ms"], r["p99_ms"],
              "**yes**" if r["generator_bound"] else "no"] for r in rows])
    if (img := chart_sweep(c, "io.png", "/io?ms=50 at rising users per server", rows, "users",
                           [("ok_rps", "ok requests / s"), ("p99_ms", "p99 latency (ms, log)")],
                           f"one run of {results['settings']['step_s']} s per point", logx=True, logy=(False, True))):
        d.img(img, "io")
    if (b := sc["summary"].get("at_once")):
        d.p(f"**Waits at once.** Fresh servers with their default sizes, side by side; a raw client opens "
            f"{fmt(b['requests'])} connections to each, then sends `GET /io?ms={b['wait_ms']}` on all of them at the "
            f"same moment and counts what came back within {fmt(b['within_s'])} s. An answer in that time waited "
            "together with the others (a second round would take twice the wait): the count is how many requests the "
            "model lets wait at once, whatever the machine's speed. Refused: another status than 200 (the pool's "
            "fast 503 once its threads and its `--queue` are taken); waiting: still no answer (a worker or a thread "
            "will come to it, later).")
        d.table(["model", "answered within the time (waits at once)", "refused (non-200)", "still waiting", "errors",
                 "slowest answer s"],
                [[m, b[m]["answered"], b[m]["refused"], b[m]["waiting"], b[m]["errors"], b[m]["slowest_s"]]
                 for m in REPORT_MODELS if m in b])


SCENARIO = Scenario(
    name="io", row="concurrency for I/O", title="Concurrency for I/O: /io?ms=50 at rising users",
    why="a waiting request pins a worker or a thread, but costs a loop only a parked task and green threads a parked "
        "greenlet — the pool's blocking code, whose waits the patched calls turn into switches",
    run=run, section=section, cells=cells, quick_s=12, full_s=45)
