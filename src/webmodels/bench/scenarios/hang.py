"""Hung work: /fault/hang (longer than the run) under /io load, every model side by side."""

from __future__ import annotations

from typing import Any

from ...config import MODEL_ENGINE, TICKING_ENGINES
from ..kit import MASTER_MODELS, Bench, med, ok_rate, side_by_side, unanswered_s, unpack_samples
from ..report import REPORT_MODELS, Charts, Doc, chart_timeline, fmt
from . import Cells, Scenario

POOL_THREADS = 8


def run(bench: Bench) -> dict[str, Any]:
    """/fault/hang under /io load: a master kills after --timeout, the pool leaks a thread, the loop stalls."""
    p = bench.plan
    users = p.pick(6, 10)
    duration = p.pick(4.0, max(2 * p.step, 12.0))
    every = p.pick(1.2, 2.0)
    timeout = p.pick(1.0, 2.0)
    hang_s = int(duration + 30)  # longer than the run: a hang that never ends by itself
    flags = {m: ["--timeout", str(timeout)] for m in MASTER_MODELS}
    flags["threadpool"] = ["--threads", str(POOL_THREADS), "--queue", "64"]
    runs = {"plain": side_by_side(bench, "hang · all models", flags, users, duration, "io", io_ms=50,
                                  fault="hang", fault_every=every, hang_s=hang_s)}
    if "eventloop" in p.models and bench.native:
        runs["watchdog"] = side_by_side(
            bench, "hang · eventloop --watchdog (restarted on exit)", {"eventloop": ["--watchdog", "1"]}, users,
            duration, "io", restart=True, models=("eventloop",), io_ms=50, fault="hang", fault_every=every,
            hang_s=hang_s)
    summary: dict[str, Any] = {"users_per_server": users, "fault_every_s": every, "prefork_timeout_s": timeout,
                               "threadpool_threads": POOL_THREADS, "hang_s": hang_s}
    plain = runs["plain"]
    for m in p.models:
        acc = plain["accounting_rows"].get(m, {})
        samples = plain["samples"].get(m) or {"cols": [], "rows": []}
        up = [s for s in unpack_samples(samples) if s.get("up")]
        ok_series = ok_rate(plain, m)
        entry = {"ok": acc.get("ok"), "collateral": acc.get("collateral"), "injected": acc.get("injected"),
                 "stats_unanswered_s": unanswered_s(samples),
                 "ok_per_s_first_second": ok_series[1][1] if len(ok_series) > 1 else None,
                 "ok_per_s_last_second": ok_series[-2][1] if len(ok_series) > 1 else None}
        final = plain["final_stats"].get(m) or {}
        fin = final.get("counters", {})
        if MODEL_ENGINE.get(m) == "threads":
            size = final.get("config") or {}
            entry["threads"] = (size.get("threads") or 0) * (size.get("workers") or 1) or None
            # after the load stopped, the busy threads are the hung ones (less the one answering /_lab/stats)
            entry["hung_threads"] = fin["busy_threads"] - 1 if "busy_threads" in fin else None
        if any("busy_threads" in s["counters"] for s in up):
            entry["busy_threads_max"] = max((s["counters"].get("busy_threads", 0) for s in up), default=None)
        if m in MASTER_MODELS:
            entry["timeout_kills"] = (fin.get("worker_exits") or {}).get("timeout")
            entry["workers_at_end"] = fin.get("workers")
        if any("loop_lag_max_ms" in s["counters"] for s in up):
            entry["loop_lag_max_ms"] = max((s["counters"].get("loop_lag_max_ms", 0) for s in up), default=None)
        summary[m] = entry
    if "watchdog" in runs:
        w = runs["watchdog"]
        acc = w["accounting_rows"].get("eventloop", {})
        summary["eventloop --watchdog 1"] = {
            "ok": acc.get("ok"), "collateral": acc.get("collateral"), "injected": acc.get("injected"),
            "restarts": len(w["restarts"].get("eventloop", [])), "recovery_ms_median": med(acc.get("recoveries_ms") or []),
            "ok_per_s_last_second": (ok_rate(w, "eventloop") or [[0, None]] * 2)[-2][1]}
    return {"raw": {"runs": runs}, "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    """Per model: what ended its hangs (or nothing did), the capacity left, and the ok/s that capacity gives."""
    s = sc["summary"]
    out = {}
    for m in models:
        e = s.get(m)
        if not e:
            continue
        end = f"{fmt(e.get('ok_per_s_last_second'))} ok/s at the end"
        if m not in MASTER_MODELS and MODEL_ENGINE.get(m) in TICKING_ENGINES:  # one thread: a loop, gevent's hub
            one = "the one loop" if MODEL_ENGINE[m] == "loop" else "the hub, and every greenlet with it"
            out[m] = (f"{fmt(e.get('injected'))} hangs: the first stalls {one}, nothing ends it → {end}; "
                      f"/_lab/stats unanswered {fmt(e.get('stats_unanswered_s'))} s")
            if m == "eventloop" and (wd := s.get("eventloop --watchdog 1")):
                out[m] += f"; with --watchdog 1: {fmt(wd.get('restarts'))} restarts"
        elif m == "threadpool":
            out[m] = (f"{fmt(e.get('injected'))} hangs → {fmt(e.get('hung_threads'))} of {fmt(e.get('threads'))} "
                      f"threads hung for good (nothing kills a thread); the rest serve {end}")
        elif MODEL_ENGINE.get(m) == "threads":
            out[m] = (f"{fmt(e.get('injected'))} hangs → {fmt(e.get('hung_threads'))} of {fmt(e.get('threads'))} "
                      f"threads hung, {fmt(e.get('timeout_kills'))} workers killed: a threads worker is hung only "
                      f"when every one of its threads is; the rest serve {end}")
        else:
            each = "one request each at a time" if MODEL_ENGINE.get(m) == "sync" else "a loop each"
            out[m] = (f"{fmt(e.get('injected'))} hangs → {fmt(e.get('timeout_kills'))} workers killed after "
                      f"{fmt(s.get('prefork_timeout_s'))} s and replaced: {fmt(e.get('workers_at_end'))} at the end, "
                      f"{each} → {end}")
    users = s.get("users_per_server") or 0
    return out, (f"/fault/hang longer than the run every {fmt(s.get('fault_every_s'))} s; {users} users per server "
                 f"on /io?ms=50 (at most {users * 20} ok/s); masters --timeout {fmt(s.get('prefork_timeout_s'))} s; "
                 f"pool {fmt(s.get('threadpool_threads'))} threads")


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"Side by side, {s['users_per_server']} users each on `/io?ms=50`; every {s['fault_every_s']} s the injector "
        f"sends `/fault/hang?s={s['hang_s']}` (longer than the run: a hang that never ends by itself). Prefork runs "
        f"with `--timeout {s['prefork_timeout_s']}`; the pool has {s['threadpool_threads']} threads. The watchdog "
        "variant runs the event loop alone with `--watchdog 1`, restarted by the bench when it exits.")
    rows = []
    for m in (*REPORT_MODELS, "eventloop --watchdog 1"):
        e = s.get(m)
        if not e:
            continue
        hung = f"{fmt(e['hung_threads'])} of {fmt(e.get('threads'))}" if e.get("hung_threads") is not None else "–"
        rows.append([m, e.get("injected"), e.get("ok"), e.get("collateral"), e.get("ok_per_s_first_second"),
                     e.get("ok_per_s_last_second"), hung, e.get("timeout_kills"), e.get("loop_lag_max_ms"),
                     e.get("restarts")])
    d.table(["model", "hangs", "ok", "collateral", "ok/s in second 1", "ok/s in the last full second",
             "threads hung at the end", "workers killed (--timeout)", "loop / hub lag max ms (as last seen)",
             "restarts"], rows)
    d.p("Threads hung at the end: the busy threads once the load stopped (less the one answering `/_lab/stats`). "
        "A master kills a worker whose heartbeat stops for `--timeout`: a sync or loop worker's stops with its one "
        "hung request; a threads worker's only when every one of its threads is hung (gunicorn's gthread rule), so "
        "one hung thread of 16 is carried, like the pool's, until the worker's last thread hangs.")
    d.note("Requests stuck behind a hang when the run stops are abandoned, not failed: that is why a stalled loop "
           "shows few collateral failures — its requests just never come back. The ok/s lines below show it.")
    runs = sc["raw"]["runs"]
    lines = [(m, ok_rate(runs["plain"], m)) for m in REPORT_MODELS if m in results["settings"]["models"]]
    if "watchdog" in runs:
        lines.append(("eventloop --watchdog", ok_rate(runs["watchdog"], "eventloop")))
    if (img := chart_timeline(c, sc, "hang.png", "Successful requests per second while hangs are injected",
                              "ok requests / s", lines, f"one run of {fmt(runs['plain']['duration_s'])} s, "
                              f"hang every {s['fault_every_s']} s")):
        d.img(img, "hang")


SCENARIO = Scenario(
    name="hang", row="hung work", title="Hung work: /fault/hang under load",
    why="only a supervisor outside the stuck code can end a hang: a master kills a worker whose heartbeat stopped "
        "(a threads worker's only when every thread is stuck, gthread's rule), nothing kills a pool's thread, a hung "
        "loop or gevent hub serves nobody; ok/s at the end is the capacity each has left — the pool's lead lasts only "
        "until the hangs outnumber its threads, a master's capacity comes back",
    run=run, section=section, cells=cells, quick_s=15, full_s=36)
