"""Communication: the /counter race and the IPC of stats."""

from __future__ import annotations

from typing import Any

import httpx

from ..kit import MASTER_MODELS, Bench, accounting_rows, start_all, stop_all
from ..report import REPORT_MODELS, Charts, Doc, chart_bars, fmt, sc_of
from ..runner import RemoteServer, get_stats
from . import Cells, Scenario


def read_counters(url: str, model: str) -> dict[str, Any]:
    """Read every process's counters (op=read); prefork needs fresh connections until each worker answered."""
    out: dict[str, Any] = {}
    workers = set((get_stats(url) or {}).get("processes", []) and
                  [p["pid"] for p in get_stats(url)["processes"] if p["role"] in ("worker", "main")])
    for mode in ("unsafe", "locked"):
        per_pid: dict[int, int] = {}
        for _ in range(400 if model in MASTER_MODELS else 1):
            r = httpx.get(f"{url}/counter?mode={mode}&op=read", headers={"Connection": "close"}, timeout=5).json()
            per_pid[r["pid"]] = r["value"]
            if not workers or workers <= set(per_pid):
                break
        complete = not workers or workers <= set(per_pid)
        out[mode] = {"per_pid": {str(k): v for k, v in per_pid.items()},
                     "total": sum(per_pid.values()) if complete else None,
                     "max": max(per_pid.values()) if per_pid else None, "complete": complete}
    return out


def run(bench: Bench) -> dict[str, Any]:
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
        finals = {m: read_counters(s.url, m) for m, s in servers.items()}
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


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    return ({m: (f"lost {fmt(s[f'{m} unsafe']['lost_pct'])}% unsafe, {fmt(s[f'{m} locked']['lost_pct'])}% locked"
                 + (f"; {s[f'{m} unsafe']['processes']} separate counters" if s[f"{m} unsafe"]["processes"] > 1 else ""))
             for m in models if f"{m} unsafe" in s}, "/counter read → yield 1 ms → write")


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"{s['users_per_server']} users per server send `/counter?mode=unsafe` and `/counter?mode=locked` "
        "(read → yield 1 ms → write). Afterwards the bench reads every process's counters (`op=read`; for prefork, "
        "fresh connections until each worker answered) and compares their sum with the increments Locust saw "
        "succeed. Lost = successes − counter (clipped at 0: Locust abandons up to one in-flight request per user at "
        "stop, which the server still counts).")
    rows = []
    for m in REPORT_MODELS:
        for mode in ("unsafe", "locked"):
            e = s.get(f"{m} {mode}")
            if e:
                rows.append([m, mode, e["increments_ok"], e["counter_total"], e["lost"], e["lost_pct"], e["processes"],
                             e["largest_single_counter"]])
    d.table(["model", "mode", "increments ok", "sum of counters", "lost", "lost %", "counters (processes)",
             "largest single counter"], rows)
    d.note("Prefork loses nothing (each worker serves one request at a time, in its own memory), but no process holds "
           "the total: each worker's counter is its own. The thread pool's threads and the loop's tasks interleave "
           "inside read → write and overwrite each other unless the lock is taken.")
    mem = sc_of(results, "memory")
    if mem:
        d.p("The IPC cost of prefork's aggregated counters, as `GET /_lab/stats` time (median, ms): " + ", ".join(
            f"{k}: {fmt(v, 2)}" for k, v in mem["summary"]["stats_route_ms"].items()) + ".")
    if (img := chart_bars(c, "counter.png", "Lost updates (% of successful increments)", ["unsafe", "locked"],
                          {m: [s.get(f"{m} {mode}", {}).get("lost_pct") for mode in ("unsafe", "locked")]
                           for m in REPORT_MODELS if f"{m} unsafe" in s}, "% lost",
                          f"one run of {fmt(sc['raw']['run']['duration_s'])} s")):
        d.img(img, "counter")


SCENARIO = Scenario(
    name="communication", row="communication", title="Communication: the /counter race and the IPC of stats",
    why="threads and tasks share memory (and race on it); processes share nothing unless they set up IPC",
    run=run, section=section, cells=cells, quick_s=5, full_s=10)
