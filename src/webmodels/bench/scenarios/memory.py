"""Memory: idle RSS vs USS vs PSS per model and configuration, and what GET /_lab/stats costs."""

from __future__ import annotations

import statistics
import time
from typing import Any

from ..kit import (HYBRIDS, SERVER_START_S, Bench, kb, mb, med, memory_of, native_only, rng, slope,
                   time_stats_route)
from ..report import Charts, Doc, guard, fmt, sc_of, REPORT_MODELS
from ..runner import get_stats
from . import Cells, Scenario


def run(bench: Bench) -> dict[str, Any]:
    """Idle memory of each model and configuration (RSS vs USS vs PSS), plus the /_lab/stats cost."""
    if (skip := native_only(bench, "the memory sweep")):
        return skip
    p = bench.plan
    workers = p.pick([1, 4], [1, 2, 4, 8])
    threads = p.pick([8, 256], [8, 32, 128, 256])
    configs: list[tuple[str, str, list[str], dict[str, Any]]] = []
    if "prefork" in p.models:
        for freeze in (False, True):
            for w in workers:
                configs.append(("prefork", f"prefork w={w}{' freeze' if freeze else ''}",
                                ["--workers", str(w)] + (["--gc-freeze"] if freeze else []),
                                {"workers": w, "gc_freeze": freeze}))
    if "threadpool" in p.models:
        for t in threads:
            configs.append(("threadpool", f"threadpool t={t}", ["--threads", str(t)], {"threads": t}))
    for single in ("eventloop", "greenthreads"):  # one thread each: nothing to size when idle
        if single in p.models:
            configs.append((single, single, [], {}))
    for h in HYBRIDS:  # the lab's defaults (2 workers; 16 threads each for hybrid-threads), then twice the workers
        if h in p.models:
            for w in (2, 4):
                configs.append((h, f"{h} w={w}", ["--workers", str(w)], {"workers": w, "gc_freeze": False}))
    rows = []
    reps = p.pick(2, 5)
    for model, label, flags, params in configs:
        bench.progress.step(f"memory · {label} (idle)", SERVER_START_S + 0.6)
        with bench.server(model, flags) as srv:
            time.sleep(0.3)  # let workers finish booting and threads reach their first wait
            samples = []
            for _ in range(reps):
                samples.append(memory_of(get_stats(srv.url)))
                time.sleep(0.05)
            samples = [s for s in samples if s]
            timing = time_stats_route(srv.url, p.pick(10, 30))
        row = {"model": model, "label": label, **params,
               **{k: int(statistics.median(s[k] for s in samples)) for k in ("rss", "uss", "pss")},
               "processes": samples[-1]["processes"], "threads_total": samples[-1]["threads"],
               "stats_ms_median": med(timing), "stats_ms_range": rng(timing)}
        rows.append(row)
    summary: dict[str, Any] = {}
    for key, pick in (("prefork", lambda r: r["model"] == "prefork" and not r["gc_freeze"]),
                      ("prefork_freeze", lambda r: r["model"] == "prefork" and r["gc_freeze"]),
                      *((h, lambda r, h=h: r["model"] == h) for h in HYBRIDS)):
        pre = [r for r in rows if pick(r)]
        if pre:
            summary[f"{key}_pss_per_worker_mb"] = mb(slope([r["workers"] for r in pre], [r["pss"] for r in pre]))
            summary[f"{key}_rss_per_worker_mb"] = mb(slope([r["workers"] for r in pre], [r["rss"] for r in pre]))
            summary[f"{key}_uss_per_worker_mb"] = mb(slope([r["workers"] for r in pre], [r["uss"] for r in pre]))
            biggest = max(pre, key=lambda r: r["workers"])
            summary[f"{key}_rss_over_pss_at_{biggest['workers']}"] = round(biggest["rss"] / biggest["pss"], 2)
    tp = [r for r in rows if r["model"] == "threadpool"]
    if tp:
        summary["threadpool_rss_per_thread_kb"] = kb(slope([r["threads"] for r in tp], [r["rss"] for r in tp]))
        summary["threadpool_pss_per_thread_kb"] = kb(slope([r["threads"] for r in tp], [r["pss"] for r in tp]))
    for r in rows:
        if r["label"] in ("prefork w=4", "threadpool t=256", "eventloop", "greenthreads", "prefork w=8",
                          "threadpool t=32"):
            summary[f"pss_mb {r['label']}"] = mb(r["pss"])
    summary["stats_route_ms"] = {r["label"]: r["stats_ms_median"] for r in rows}
    return {"raw": {"rows": rows, "repetitions": reps}, "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s, by = sc["summary"], {r["label"]: r for r in sc["raw"]["rows"]}
    pre = max((r for r in sc["raw"]["rows"] if r["model"] == "prefork" and not r["gc_freeze"]),
              key=lambda r: r["workers"], default=None)
    tp = max((r for r in sc["raw"]["rows"] if r["model"] == "threadpool"), key=lambda r: r["threads"], default=None)
    out = {}
    if pre:
        out["prefork"] = (f"PSS {fmt(pre['pss'] / 2**20)} MiB at {pre['workers']} workers (RSS "
                          f"{fmt(pre['rss'] / 2**20)}); +{fmt(s.get('prefork_pss_per_worker_mb'))} MiB PSS/worker")
    if tp:
        out["threadpool"] = (f"PSS {fmt(tp['pss'] / 2**20)} MiB at {tp['threads']} threads; "
                             f"+{fmt(s.get('threadpool_pss_per_thread_kb'))} KiB/thread")
    for single in ("eventloop", "greenthreads"):
        if single in by:
            out[single] = f"PSS {fmt(by[single]['pss'] / 2**20)} MiB"
    for h in HYBRIDS:
        hr = max((r for r in sc["raw"]["rows"] if r["model"] == h), key=lambda r: r["workers"], default=None)
        if hr:
            out[h] = (f"PSS {fmt(hr['pss'] / 2**20)} MiB at {hr['workers']} workers (RSS {fmt(hr['rss'] / 2**20)}); "
                      f"+{fmt(s.get(f'{h}_pss_per_worker_mb'))} MiB PSS/worker")
    return out, "idle; RSS overstates prefork (shared pages counted per process)"


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p("Each configuration started alone and idle; figures are summed over the server's process tree (median of "
        f"{sc['raw']['repetitions']} samples). USS = pages only that process has; PSS = shared pages split among "
        "the processes that share them (including unrelated processes mapping the same libraries, so PSS moves a "
        "little with whatever else runs); RSS counts every shared page in full, once per process.")
    d.table(["configuration", "processes", "threads", "RSS MiB", "USS MiB", "PSS MiB", "RSS / PSS", "/_lab/stats ms"],
            [[r["label"], r["processes"], r["threads_total"], r["rss"] / 2**20, r["uss"] / 2**20, r["pss"] / 2**20,
              round(r["rss"] / r["pss"], 2) if r["pss"] else None, r["stats_ms_median"]] for r in sc["raw"]["rows"]])
    per_unit = [
        ["prefork worker, MiB", s.get("prefork_rss_per_worker_mb"), s.get("prefork_uss_per_worker_mb"),
         s.get("prefork_pss_per_worker_mb")],
        ["prefork worker with --gc-freeze, MiB", s.get("prefork_freeze_rss_per_worker_mb"),
         s.get("prefork_freeze_uss_per_worker_mb"), s.get("prefork_freeze_pss_per_worker_mb")],
        ["pool thread, KiB", s.get("threadpool_rss_per_thread_kb"), "–", s.get("threadpool_pss_per_thread_kb")]]
    per_unit += [[f"{h} worker, MiB", s.get(f"{h}_rss_per_worker_mb"), s.get(f"{h}_uss_per_worker_mb"),
                  s.get(f"{h}_pss_per_worker_mb")] for h in HYBRIDS if f"{h}_pss_per_worker_mb" in s]
    d.table(["per extra unit (least-squares slope)", "RSS", "USS", "PSS"], per_unit)
    ctx = sc_of(results, "context")
    if ctx:
        d.p("Under load (the hello runs of the context-switching scenario), peak over the run:")
        d.table(["model", "RSS MiB", "USS MiB", "PSS MiB"],
                [[m, ctx["summary"][m].get("rss_peak_mb"), ctx["summary"][m].get("uss_peak_mb"),
                  ctx["summary"][m].get("pss_peak_mb")] for m in REPORT_MODELS if m in ctx["summary"]])
    d.note("`/_lab/stats ms` is also the price of prefork's aggregated view: the counters come from the shared-memory "
           "board (a few reads), the bulk is psutil reading /proc for every process of the tree — it grows with workers.")
    if (img := chart(c, sc)):
        d.img(img, "memory per configuration")


@guard
def chart(c: Charts, sc: dict[str, Any]) -> str | None:
    rows = sc["raw"]["rows"]
    fig, ax = c.plt.subplots(figsize=(11, 4.6))
    labels = [r["label"] for r in rows]
    xs = range(len(rows))
    w = 0.27
    for i, (k, col) in enumerate((("rss", "#c44e52"), ("uss", "#55a868"), ("pss", "#4c72b0"))):
        ax.bar([x + (i - 1) * w for x in xs], [r[k] / 2**20 for r in rows], w, label=k.upper(), color=col)
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("MiB (whole process tree)")
    ax.set_title("Idle memory: RSS counts shared pages once per process — it overstates prefork")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.subplots_adjust(bottom=0.3)
    c.footer(fig, f"idle, median of {sc['raw']['repetitions']} samples per configuration")
    return c.save(fig, "memory.png")


SCENARIO = Scenario(
    name="memory", row="memory space / resource usage", title="Memory: RSS vs USS vs PSS",
    why="a process copies what threads and tasks share; copy-on-write keeps a fork's pages shared until written",
    run=run, section=section, cells=cells, quick_s=8, full_s=16)
