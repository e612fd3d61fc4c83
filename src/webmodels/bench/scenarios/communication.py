"""Communication: the /counter race, the IPC of stats, and what one /metrics scrape costs prefork at 8 workers."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from ..kit import MASTER_MODELS, Bench, med, pct, start_all, stop_all
from ..report import REPORT_MODELS, Charts, Doc, chart_bars, fmt, sc_of
from ..rawclient import address, get, send_all
from ..runner import RemoteServer, get_stats
from . import Cells, Scenario


MODES = ("unsafe", "locked")


def read_counters(url: str, model: str) -> dict[str, Any]:
    """Read every process's counters (op=read); prefork needs fresh connections until each worker answered."""
    out: dict[str, Any] = {}
    workers = set((get_stats(url) or {}).get("processes", []) and
                  [p["pid"] for p in get_stats(url)["processes"] if p["role"] in ("worker", "main")])
    for mode in MODES:
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


SCRAPE_WORKERS = 8
# a few routes and statuses, so the histogram has several label sets in every worker's region, as in a lab run
SCRAPE_WARMUP = ("/", "/io?ms=1", "/counter?mode=locked&op=read", "/bytes?kb=1", "/no-such-route")
SCRAPE_GAUGE = re.compile(rb"^webmodels_metrics_scrape_duration_seconds(?:\{[^}]*\})? (\S+)$", re.M)


def scrape_cost(bench: Bench, scrapes: int) -> dict[str, Any]:
    """Prefork with 8 workers: time SCRAPES GETs of /metrics, after every worker has served and counted in its region.

    Wall time (client side, keep-alive) is what Prometheus waits; CPU time is what the answering worker's
    thread spends (its own gauge, webmodels_metrics_scrape_duration_seconds, read from the next scrape's body):
    adding up the 8 workers' regions of the shared-memory tally (tally.py) and rendering the text. The process tree's memory is read from
    /proc on the worker's helper thread meanwhile: in the wall time, not in the CPU time.
    """
    srv = bench.server("prefork", ["--workers", str(SCRAPE_WORKERS)])
    srv.start()
    try:
        served: set[int] = set()
        warm = 0
        with httpx.Client(timeout=5, headers={"Connection": "close"}) as c:  # a fresh connection, any worker
            while warm < 80 * SCRAPE_WORKERS and (warm < 20 * SCRAPE_WORKERS or len(served) < SCRAPE_WORKERS):
                c.get(f"{srv.url}{SCRAPE_WARMUP[warm % len(SCRAPE_WARMUP)]}")
                warm += 1
                if warm % 40 == 0:
                    served = {w["pid"] for w in (get_stats(srv.url) or {}).get("per_worker", []) if w["requests"]}
        wall, cpu, size, lines = [], [], 0, 0
        with httpx.Client(timeout=5) as c:  # keep-alive: one worker answers every scrape, as for Prometheus
            for i in range(scrapes + 1):
                t = time.perf_counter()
                r = c.get(f"{srv.url}/metrics")
                ms = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                m = SCRAPE_GAUGE.search(r.content)
                if i:  # the gauge says what the previous scrape cost; the first one has no previous
                    cpu.append(float(m.group(1)) * 1000 if m else None)
                if i < scrapes:
                    wall.append(ms)
                    size, lines = len(r.content), sum(1 for ln in r.content.splitlines() if ln and ln[:1] != b"#")
    finally:
        srv.stop()
    return {"workers": SCRAPE_WORKERS, "workers_served": len(served), "warmup_requests": warm, "n": len(wall),
            "wall_ms_median": med(wall), "wall_ms_p90": pct(wall, 90),
            "cpu_ms_median": med(cpu), "cpu_ms_p90": pct([x for x in cpu if x is not None], 90),
            "bytes": size, "samples": lines}


def run(bench: Bench) -> dict[str, Any]:
    """/counter unsafe vs locked: lost updates per model; what reading prefork's counters (and metrics) costs."""
    p = bench.plan
    clients, each = p.pick(8, 16), p.pick(40, 200)  # a fixed count: a busy machine takes longer, not fewer
    models = p.models
    servers = {m: bench.server(m) for m in models}
    start_all(servers)
    try:
        for s in servers.values():  # compose servers keep their counters between runs: start from zero
            for mode in MODES:
                for _ in range(32 if s.__class__ is RemoteServer else 1):
                    httpx.get(f"{s.url}/counter?mode={mode}&op=reset", timeout=5)
        bench.progress.step(f"communication · /counter unsafe+locked · {clients} clients × {each} each",
                            clients * each * 0.004)
        sent = send_all({m: address(s.url) for m, s in servers.items()},
                        [(mode, get(f"/counter?mode={mode}")) for _ in range(each // 2) for mode in MODES], clients)
        bench.progress.step("communication · reading the counters back", 1.0)
        finals = {m: read_counters(s.url, m) for m, s in servers.items()}
    finally:
        stop_all(servers)
    summary: dict[str, Any] = {"clients_per_server": clients, "increments_per_client": each // 2 * 2}
    for m in models:
        for mode in MODES:
            ok = sent[m][mode]["ok"]
            got = finals[m][mode]["total"]
            # a request that timed out may still have incremented: the counter can exceed the successes, never
            # by a lost update, so lost is clipped at 0
            lost = max(0, ok - got) if got is not None else None
            summary[f"{m} {mode}"] = {"increments_ok": ok, "failed": sent[m][mode]["failed"], "counter_total": got,
                                      "lost": lost,
                                      "lost_pct": round(100 * lost / ok, 1) if ok and lost is not None else None,
                                      "processes": len(finals[m][mode]["per_pid"]),
                                      "largest_single_counter": finals[m][mode]["max"]}
    if "prefork" in models and bench.native:  # compose targets: the lab's prefork runs its own worker count
        bench.progress.step(f"communication · /metrics scrapes of prefork at {SCRAPE_WORKERS} workers", 2.0)
        summary["scrape_8_workers"] = scrape_cost(bench, p.pick(30, 100))
    return {"raw": {"sent": sent, "finals": finals}, "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    out = {m: (f"lost {fmt(s[f'{m} unsafe']['lost_pct'])}% unsafe, {fmt(s[f'{m} locked']['lost_pct'])}% locked"
               + (f"; {s[f'{m} unsafe']['processes']} separate counters" if s[f"{m} unsafe"]["processes"] > 1 else ""))
           for m in models if f"{m} unsafe" in s}
    conditions = "/counter read → yield 1 ms → write"
    if (sc8 := s.get("scrape_8_workers")) and "prefork" in out:
        out["prefork"] += (f"; one /metrics scrape at {sc8['workers']} workers {fmt(sc8['wall_ms_median'])} ms "
                           f"({fmt(sc8['cpu_ms_median'])} ms CPU of the worker that adds up their tallies)")
        conditions += f"; scrape: median of {sc8['n']}"
    return out, conditions


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"{s['clients_per_server']} keep-alive clients per server, all servers at once, each send "
        f"{s['increments_per_client']} increments, alternating `/counter?mode=unsafe` and `/counter?mode=locked` "
        "(read → yield 1 ms → write): a fixed count, so a busy machine makes the run longer, not the figures "
        "thinner. Afterwards the bench reads every process's counters (`op=read`; for prefork, fresh connections "
        "until each worker answered) and compares their sum with the increments answered 200. Lost = successes − "
        "counter (clipped at 0: a request that timed out may still have counted).")
    rows = []
    for m in REPORT_MODELS:
        for mode in MODES:
            if (e := s.get(f"{m} {mode}")):
                rows.append([m, mode, e["increments_ok"], e["failed"], e["counter_total"], e["lost"], e["lost_pct"],
                             e["processes"], e["largest_single_counter"]])
    d.table(["model", "mode", "increments ok", "failed", "sum of counters", "lost", "lost %", "counters (processes)",
             "largest single counter"], rows)
    d.note("Prefork loses nothing (each worker serves one request at a time, in its own memory), but no process holds "
           "the total: each worker's counter is its own. The thread pool's threads, the loop's tasks and the green threads' greenlets "
           "interleave inside read → write (the 1 ms yield: a thread sleeps, a task awaits, a greenlet's patched sleep "
           "switches to another) and overwrite each other unless the lock is taken.")
    if sc8 := s.get("scrape_8_workers"):
        d.p(f"**What a `/metrics` scrape costs prefork at {sc8['workers']} workers.** The histogram's counts live in "
            "shared memory, not in files: the tally has one region per worker slot, mapped by the master before the "
            "first fork; each worker counts into its own without a lock, and whichever worker answers a scrape adds "
            "up every region (`src/webmodels/tally.py`). A fresh `--workers {sc8['workers']}` server served "
            f"{sc8['warmup_requests']} requests on fresh connections ({sc8['workers_served']} of {sc8['workers']} "
            f"workers had served, so had counted in its region), then answered {sc8['n']} scrapes on one keep-alive connection "
            f"(one worker, as for Prometheus; {sc8['samples']} samples, {fmt(sc8['bytes'] / 1024)} KiB each): "
            f"**{fmt(sc8['wall_ms_median'], 2)} ms** median wall time (p90 {fmt(sc8['wall_ms_p90'], 2)}), what the "
            f"scraper waits; of it, the answering worker's own CPU time (its "
            f"`webmodels_metrics_scrape_duration_seconds`): median {fmt(sc8['cpu_ms_median'], 2)} ms "
            f"(p90 {fmt(sc8['cpu_ms_p90'], 2)}) — adding up the regions and rendering the text. The rest is waiting, not "
            "this worker's CPU: its helper thread reads the process tree's memory from `/proc` (smaps_rollup of the "
            "master and every worker, as `/_lab/stats` does), and the server's core runs everything else. The "
            "master does not answer scrapes, and nothing is folded when a worker dies: its counts stay in its region, and "
            "the worker that takes its slot counts on from there.")
    mem = sc_of(results, "memory")
    if mem:
        d.p("The IPC cost of prefork's aggregated counters, as `GET /_lab/stats` time (median, ms): " + ", ".join(
            f"{k}: {fmt(v, 2)}" for k, v in mem["summary"]["stats_route_ms"].items()) + ".")
    if (img := chart_bars(c, "counter.png", "Lost updates (% of successful increments)", list(MODES),
                          {m: [s.get(f"{m} {mode}", {}).get("lost_pct") for mode in MODES]
                           for m in REPORT_MODELS if f"{m} unsafe" in s}, "% lost",
                          f"{s['clients_per_server']} clients × {s['increments_per_client']} increments per server")):
        d.img(img, "counter")


SCENARIO = Scenario(
    name="communication", row="communication",
    title="Communication: the /counter race and the IPC of stats and metrics",
    why="threads, tasks and greenlets share memory (and race on it); processes share nothing unless they set up IPC "
        "(here: shared-memory regions mapped before the fork)",
    run=run, section=section, cells=cells, quick_s=7, full_s=12)
