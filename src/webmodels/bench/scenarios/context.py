"""Context switching and the hello ceiling."""

from __future__ import annotations

from typing import Any

from .. import locustrun
from ..kit import Bench, alone, mb, peak
from ..report import REPORT_MODELS, Charts, Doc, chart_bars, fmt, fmt_range, sc_of
from . import Cells, Scenario


def run(bench: Bench) -> dict[str, Any]:
    """Same hello load on each model alone: context switches per request, the ceiling, Locust's own CPU."""
    p = bench.plan
    users = p.pick(16, 24)
    runs = {m: alone(bench, m, [], f"context · hello · {m} alone", users, p.step, "hello") for m in p.models}
    summary: dict[str, Any] = {"users": users}
    for m, r in runs.items():
        b, a = (r["before"] or {}).get("totals"), (r["after"] or {}).get("totals")
        reqs = ((r["after"] or {}).get("counters", {}).get("requests", 0)
                - (r["before"] or {}).get("counters", {}).get("requests", 0))
        ss = locustrun.server_stats(r, m)
        entry = {"rps": ss.get("rps"), "p50_ms": ss.get("p50_ms"), "p99_ms": ss.get("p99_ms"),
                 "server_requests": reqs, "locust_cpu_cores": r["locust_cpu"]["max_process_core_share"],
                 "generator_bound": r["generator_bound"], "rss_peak_mb": mb(peak(r["samples"][m], "rss")),
                 "uss_peak_mb": mb(peak(r["samples"][m], "uss")), "pss_peak_mb": mb(peak(r["samples"][m], "pss")),
                 "os_threads": (a or {}).get("threads"), "processes": (a or {}).get("processes")}
        tb, ta = (r["before"] or {}).get("threads_ctx"), (r["after"] or {}).get("threads_ctx")
        if tb and ta and reqs > 0:  # every thread (see tree_ctx); /_lab/stats' main-thread figure kept beside it
            entry["voluntary_per_request"] = round((ta["voluntary"] - tb["voluntary"]) / reqs, 3)
            entry["involuntary_per_request"] = round((ta["involuntary"] - tb["involuntary"]) / reqs, 3)
            entry["ctx_source"] = "/proc/PID/task/*/status (all threads)"
        elif a and b and reqs > 0:
            entry["voluntary_per_request"] = round((a["ctx_voluntary"] - b["ctx_voluntary"]) / reqs, 3)
            entry["involuntary_per_request"] = round((a["ctx_involuntary"] - b["ctx_involuntary"]) / reqs, 3)
            entry["ctx_source"] = "/_lab/stats (main threads only)"
        if a and b and reqs > 0:
            entry["main_thread_ctx_per_request"] = round(
                (a["ctx_voluntary"] + a["ctx_involuntary"] - b["ctx_voluntary"] - b["ctx_involuntary"]) / reqs, 3)
            entry["server_cpu_ms_per_request"] = round((a["cpu_seconds"] - b["cpu_seconds"]) * 1000 / reqs, 4)
        summary[m] = entry
    return {"raw": {"runs": runs}, "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    return ({m: (f"{fmt(s[m].get('voluntary_per_request'), 2)} vol + "
                 f"{fmt(s[m].get('involuntary_per_request'), 2)} invol / request") for m in models if m in s},
            "same hello load, each model alone")


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"Each model alone on the server core, {s['users']} Locust users on `GET /` (hello) for one load step. Context "
        "switches: deltas over every thread of every process (`/proc/PID/task/*/status`) divided by the requests the "
        "server counted. (`/_lab/stats` reports psutil's per-process figure, which the kernel keeps for the main "
        "thread only — a pool's threads are invisible there; it is shown as `main thread / req`.) OS threads: what "
        "the kernel schedules, summed over the process tree at the end of the run; green threads serve "
        f"{s['users']} connections with one, because a greenlet is not a thread to the kernel: a switch between "
        "greenlets is a jump inside the process, which no counter of the kernel sees.")
    d.table(["model", "rps", "p50 ms", "p99 ms", "voluntary / req", "involuntary / req", "main thread / req",
             "OS threads", "server CPU ms / req", "Locust core share", "generator-bound"],
            [[m, e.get("rps"), e.get("p50_ms"), e.get("p99_ms"), e.get("voluntary_per_request"),
              e.get("involuntary_per_request"), e.get("main_thread_ctx_per_request"), e.get("os_threads"),
              e.get("server_cpu_ms_per_request"), e.get("locust_cpu_cores"),
              "**yes**" if e.get("generator_bound") else "no"]
             for m, e in sorted(((m, e) for m, e in s.items() if isinstance(e, dict)),
                                key=lambda me: REPORT_MODELS.index(me[0]) if me[0] in REPORT_MODELS else 99)])
    w = sc_of(results, "wrk")
    if w:
        d.p(f"**Cross-check with wrk** ({w['summary'].get('settings')}): " + "; ".join(
            f"{m} {fmt(w['summary'][m]['rps_median'])} rps (range {fmt_range(w['summary'][m]['rps_range'], 0)})"
            for m in REPORT_MODELS if m in w["summary"]) + ". Where wrk is far above Locust, Locust's figure is the "
            "generator's ceiling, not the server's.")
    ms = [m for m in REPORT_MODELS if m in s]
    if (img := chart_bars(c, "context.png", "Context switches per request (same hello load, each model alone)", ms,
                          {"voluntary": [s[m].get("voluntary_per_request") for m in ms],
                           "involuntary": [s[m].get("involuntary_per_request") for m in ms]}, "switches / request",
                          f"one run of {results['settings']['step_s']} s per model")):
        d.img(img, "context switches")


SCENARIO = Scenario(
    name="context", row="context switching", title="Context switching and the hello ceiling",
    why="the kernel counts every switch of every thread (all of /proc/PID/task): a pool's threads hand the GIL and the "
        "CPU to each other through it; a loop's tasks and gevent's greenlets switch inside one thread, unseen",
    run=run, section=section, cells=cells, quick_s=11, full_s=25)
