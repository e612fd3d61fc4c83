"""results.json → report.md, report.html and PNG charts; nothing here measures, so a report can be rebuilt anywhere.

Every figure printed comes from `results.json`; the output depends on nothing else (no clock, no host), so
`webmodels report DIR` on the same results writes the same Markdown and HTML.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any, Callable

MODELS = ("prefork", "threadpool", "eventloop")
COLORS = {"prefork": "#1f77b4", "threadpool": "#ff7f0e", "eventloop": "#2ca02c",
          "prefork --max-requests": "#9467bd", "eventloop --watchdog": "#8c564b"}


# -- formatting ------------------------------------------------------------------------------------------
def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}".replace(",", " ")
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}".replace(",", " ")
        if abs(x) >= 100:
            return f"{x:.0f}"
        if 0 < abs(x) < 0.1:
            return f"{x:.3g}"
        return f"{x:.{digits}f}"
    return str(x)


def fmt_range(r: list[float] | None, digits: int = 1) -> str:
    return "–" if not r else f"{fmt(r[0], digits)}–{fmt(r[1], digits)}"


class Doc:
    """A tiny document model rendered both to Markdown and to HTML, so the two never disagree."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def table(self, head: list[str], rows: list[list[Any]], text: bool = False) -> None:
        """Add a table; TEXT: cells are sentences (left-aligned), not numbers."""
        self.blocks.append(("table", (head, [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows],
                                      text)))

    def img(self, path: str, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def markdown(self) -> str:
        out = []
        for kind, val in self.blocks:
            if kind == "h":
                out.append("#" * val[0] + " " + val[1])
            elif kind == "p":
                out.append(val)
            elif kind == "note":
                out.append("> " + val)
            elif kind == "table":
                head, rows, _ = val
                out.append("| " + " | ".join(head) + " |")
                out.append("|" + "|".join("---" for _ in head) + "|")
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
            elif kind == "img":
                out.append(f"![{val[1]}]({val[0]})")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        def inline(text: str) -> str:
            t = html.escape(text)
            t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
            return re.sub(r"`(.+?)`", r"<code>\1</code>", t)

        body = []
        for kind, val in self.blocks:
            if kind == "h":
                body.append(f"<h{val[0]}>{inline(val[1])}</h{val[0]}>")
            elif kind == "p":
                body.append(f"<p>{inline(val)}</p>")
            elif kind == "note":
                body.append(f'<p class="note">{inline(val)}</p>')
            elif kind == "table":
                head, rows, text = val
                body.append(f"<table{' class=text' if text else ''}><thead><tr>" + "".join(f"<th>{inline(h)}</th>" for h in head) + "</tr></thead><tbody>")
                for r in rows:
                    body.append("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>")
                body.append("</tbody></table>")
            elif kind == "img":
                body.append(f'<figure><img src="{html.escape(val[0])}" alt="{html.escape(val[1])}"></figure>')
        return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{CSS}</style></head><body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1d1d1f;background:#fafafa;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:28px;margin:8px 0 4px}h2{font-size:21px;margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:17px;margin-top:22px}
table{border-collapse:collapse;margin:10px 0 14px;font-size:13.5px}
th,td{border:1px solid #d6d6d6;padding:4px 9px;text-align:right;vertical-align:top}
th{background:#f1f3f6;text-align:center}td:first-child,th:first-child{text-align:left}
tbody tr:nth-child(even){background:#fbfbfc}
table.text td{text-align:left}table.text td:first-child{font-weight:600;white-space:nowrap}
code{background:#f2f2f2;padding:1px 4px;border-radius:3px;font-size:90%}
.note{color:#555;border-left:3px solid #c9d3e0;padding-left:10px}
figure{margin:12px 0}img{max-width:100%;border:1px solid #e4e4e4}
"""


# -- the charts ------------------------------------------------------------------------------------------------
class Charts:
    """Draw PNGs with matplotlib's Agg backend; every chart's footer names machine, duration, repetitions."""

    def __init__(self, results: dict[str, Any], outdir: Path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        self.plt = plt
        self.out = outdir
        self.results = results
        m = results["machine"]
        self.machine = f"{m.get('cores_usable')} cores · {m.get('cpu_model') or 'cpu ?'} · Python {m.get('python')}"
        self.made: list[str] = []

    def footer(self, fig: Any, what: str) -> None:
        fig.text(0.01, 0.01, f"{self.machine} · {what}", fontsize=7.5, color="#555", ha="left", va="bottom")

    def save(self, fig: Any, name: str) -> str:
        fig.savefig(self.out / name, dpi=100, metadata={"Software": None})
        self.plt.close(fig)
        self.made.append(name)
        return name


def _guard(fn: Callable[..., str | None]) -> Callable[..., str | None]:
    def wrapped(*a: Any, **kw: Any) -> str | None:
        try:
            return fn(*a, **kw)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
            return None  # a scenario with missing data gets no chart, the table still says what is there
    return wrapped


@_guard
def chart_memory(c: Charts, sc: dict[str, Any]) -> str | None:
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


@_guard
def chart_faults(c: Charts, sc: dict[str, Any]) -> str | None:
    s = sc["summary"]
    faults = [f for f in ("crash", "segfault") if any(k.startswith(f + " ") for k in s)]
    fig, axes = c.plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, title, unit) in zip(axes, (("collateral_per_fault", "Collateral failures per injected fault", ""),
                                             ("recovery_ms", "Recovery: fault → next success", " ms"))):
        for j, f in enumerate(faults):
            for i, m in enumerate(MODELS):
                e = s.get(f"{f} {m}")
                if not e:
                    continue
                med_, r = e.get(f"{key}_median"), e.get(f"{key}_range")
                if med_ is None:
                    continue
                x = j * 4 + i
                err = [[med_ - r[0]], [r[1] - med_]] if r else None
                ax.bar(x, med_, color=COLORS[m], label=m if j == 0 else None, yerr=err, capsize=4)
        ax.set_xticks([j * 4 + 1 for j in range(len(faults))], faults)
        ax.set_title(title + (unit and f" ({unit.strip()})"), fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    reps = sc["raw"].get("repetitions", {})
    c.footer(fig, f"steady /io?ms=50 load, {s.get('users_per_server')} users per server, a fault every "
             f"{s.get('fault_every_s')} s, runs: {reps}; bars = median, whiskers = range")
    fig.subplots_adjust(bottom=0.15)
    return c.save(fig, "faults.png")


@_guard
def chart_timeline(c: Charts, sc: dict[str, Any], name: str, title: str, ylabel: str,
                   lines: list[tuple[str, list[list[float]]]], what: str) -> str | None:
    fig, ax = c.plt.subplots(figsize=(11, 4))
    for label, pts in lines:
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, color=COLORS.get(label), marker=".",
                    linewidth=1.6)
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.subplots_adjust(bottom=0.17)
    c.footer(fig, what)
    return c.save(fig, name)


@_guard
def chart_sweep(c: Charts, name: str, title: str, rows: list[dict[str, Any]], x: str, panels: list[tuple[str, str]],
                what: str, series_key: str | None = "model", logx: bool = False, logy: tuple[bool, ...] = ()) -> str | None:
    fig, axes = c.plt.subplots(1, len(panels), figsize=(11, 4))
    axes = axes if len(panels) > 1 else [axes]
    groups = sorted({r[series_key] for r in rows}, key=lambda m: MODELS.index(m) if m in MODELS else 9) \
        if series_key else [None]
    for i, (ax, (key, label)) in enumerate(zip(axes, panels)):
        for g in groups:
            pts = sorted((r[x], r[key]) for r in rows if (g is None or r[series_key] == g) and r.get(key) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=g or label,
                        color=COLORS.get(g or "", None))
            bound = [r for r in rows if (g is None or r[series_key] == g) and r.get("generator_bound")
                     and r.get(key) is not None]
            for r in bound:
                ax.annotate("gen-bound", (r[x], r[key]), fontsize=7, color="#a00", xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel(x)
        ax.set_title(label, fontsize=11)
        if logx:
            ax.set_xscale("log", base=2)
        if i < len(logy) and logy[i]:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)  # a throughput axis that starts at 0 does not exaggerate small differences
        ax.grid(alpha=0.3)
        if series_key:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=12)
    fig.subplots_adjust(bottom=0.18, top=0.85, wspace=0.25)
    c.footer(fig, what)
    return c.save(fig, name)


@_guard
def chart_bars(c: Charts, name: str, title: str, groups: list[str], series: dict[str, list[float | None]],
               ylabel: str, what: str, logy: bool = False) -> str | None:
    fig, ax = c.plt.subplots(figsize=(11, 4))
    n = max(len(series), 1)
    w = 0.8 / n
    for i, (label, vals) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * w for j in range(len(groups))]
        ax.bar(xs, [v or 0 for v in vals], w, label=label, color=COLORS.get(label))
        for x, v in zip(xs, vals):
            if v is not None:
                ax.annotate(fmt(v, 2), (x, v or 0), ha="center", fontsize=7.5, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)), groups, fontsize=8.5)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.17)
    c.footer(fig, what)
    return c.save(fig, name)


# -- the report ------------------------------------------------------------------------------------------------
def _sc(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    sc = results["scenarios"].get(name)
    if not sc or sc.get("skipped") or sc.get("error"):
        return None
    return sc


def headline(results: dict[str, Any]) -> list[list[str]]:
    """The processes-vs-threads table: one row per scenario, one column per model, measured figures."""
    rows: list[list[str]] = []
    models = [m for m in MODELS if m in results["settings"]["models"]]

    def row(label: str, cells: dict[str, str], note: str = "") -> None:
        rows.append([label] + [cells.get(m, "–") for m in models] + [note])

    if (sc := _sc(results, "memory")):
        s, by = sc["summary"], {r["label"]: r for r in sc["raw"]["rows"]}
        pre = max((r for r in sc["raw"]["rows"] if r["model"] == "prefork" and not r["gc_freeze"]),
                  key=lambda r: r["workers"], default=None)
        tp = max((r for r in sc["raw"]["rows"] if r["model"] == "threadpool"), key=lambda r: r["threads"], default=None)
        cells = {}
        if pre:
            cells["prefork"] = (f"PSS {fmt(pre['pss'] / 2**20)} MiB at {pre['workers']} workers (RSS "
                                f"{fmt(pre['rss'] / 2**20)}); +{fmt(s.get('prefork_pss_per_worker_mb'))} MiB PSS/worker")
        if tp:
            cells["threadpool"] = (f"PSS {fmt(tp['pss'] / 2**20)} MiB at {tp['threads']} threads; "
                                   f"+{fmt(s.get('threadpool_pss_per_thread_kb'))} KiB/thread")
        if "eventloop" in by:
            cells["eventloop"] = f"PSS {fmt(by['eventloop']['pss'] / 2**20)} MiB"
        row("memory space / resource usage", cells, "idle; RSS overstates prefork (shared pages counted per process)")
    if (sc := _sc(results, "faults")):
        s = sc["summary"]
        cells = {m: (f"{fmt(s[f'crash {m}']['collateral_per_fault_median'])} collateral/crash, down "
                     f"{fmt(s[f'crash {m}']['downtime_ms_median'])} ms") for m in models if f"crash {m}" in s}
        row("fault isolation", cells, "crash under /io load; theory: prefork 0, shared fate ≈ in-flight")
    if (sc := _sc(results, "hang")):
        s = sc["summary"]
        cells = {}
        if "prefork" in s:
            cells["prefork"] = (f"{fmt(s['prefork'].get('timeout_kills'))} hung workers killed after "
                                f"{fmt(s.get('prefork_timeout_s'))} s; {fmt(s['prefork'].get('workers_at_end'))} workers at end")
        if "threadpool" in s:
            cells["threadpool"] = (f"busy threads → {fmt(s['threadpool'].get('busy_threads_max'))}/"
                                   f"{fmt(s['threadpool'].get('pool_size'))} (leaked); ok/s at end "
                                   f"{fmt(s['threadpool'].get('ok_per_s_last_second'))}")
        if "eventloop" in s:
            cells["eventloop"] = (f"stalled: ok/s at end {fmt(s['eventloop'].get('ok_per_s_last_second'))}; "
                                  f"stats unanswered {fmt(s['eventloop'].get('stats_unanswered_s'))} s")
            if "eventloop --watchdog 1" in s:
                wd = s["eventloop --watchdog 1"]
                cells["eventloop"] += f"; --watchdog 1: {fmt(wd.get('restarts'))} restarts"
        row("hung work", cells, "a hang that never ends by itself")
    if (sc := _sc(results, "leak")):
        s = sc["summary"]
        cells = {m: f"USS {fmt(s[m]['uss_start_mb'])} → {fmt(s[m]['uss_end_mb'])} MiB" for m in models if m in s}
        if "prefork --max-requests" in s:
            cells["prefork"] = cells.get("prefork", "") + (f"; with --max-requests: end "
                                                           f"{fmt(s['prefork --max-requests']['uss_end_mb'])} MiB")
        row("leaks", cells, f"{fmt(s.get('leak_mb_each'))} MiB leaked every {fmt(s.get('fault_every_s'), 2)} s")
    if (sc := _sc(results, "communication")):
        s = sc["summary"]
        cells = {m: (f"lost {fmt(s[f'{m} unsafe']['lost_pct'])}% unsafe, {fmt(s[f'{m} locked']['lost_pct'])}% locked"
                     + (f"; {s[f'{m} unsafe']['processes']} separate counters" if s[f"{m} unsafe"]["processes"] > 1 else ""))
                 for m in models if f"{m} unsafe" in s}
        row("communication", cells, "/counter read → yield 1 ms → write")
    if (sc := _sc(results, "creation")):
        s = sc["summary"]
        g = lambda k: s.get(k, {}).get("median")  # noqa: E731
        row("creation overhead", {
            "prefork": f"worker: {fmt(g('prefork worker: SIGTTIN → serves its first request (ms)'))} ms to first answer "
                       f"(fork alone {fmt(g('os.fork() → child runs (ms)'), 2)} ms)",
            "threadpool": f"thread start: {fmt((g('threading.Thread.start() → thread runs (ms)') or 0) * 1000)} µs",
            "eventloop": f"task: {fmt((g('loop.create_task() → task runs (ms)') or 0) * 1000)} µs"}, "medians")
    if (sc := _sc(results, "context")):
        s = sc["summary"]
        row("context switching", {m: (f"{fmt(s[m].get('voluntary_per_request'), 2)} vol + "
                                      f"{fmt(s[m].get('involuntary_per_request'), 2)} invol / request")
                                  for m in models if m in s}, "same hello load, each model alone")
    if (sc := _sc(results, "multicore")):
        s = sc["summary"]
        top = max(s["levels"])
        row("multi-core", {m: (f"×{fmt(s.get(f'{m} speedup {top} vs 1 users'), 2)} rps from 1→{top} users; `/` p99 "
                               f"{fmt(s.get(f'{m} / p99 at {top} users (ms)'))} ms") for m in models},
            f"/cpu?ms={s['cpu_ms']} on {s['cores']} cores")
    if (sc := _sc(results, "io")):
        s = sc["summary"]
        top = max(s["levels"])
        row("concurrency for I/O", {m: (f"{fmt(s[f'{m} at {top} users']['ok_rps'])} ok rps, p99 "
                                        f"{fmt(s[f'{m} at {top} users']['p99_ms'])} ms") for m in models
                                    if f"{m} at {top} users" in s}, f"/io?ms=50 at {top} users per server")
    if (sc := _sc(results, "overthreading")):
        s = sc["summary"]
        row("over-threading", {"threadpool": f"best at {s['best_threads']} threads ({fmt(s['best_rps'])} rps); " +
                               ", ".join(f"{t}: {fmt(v['rps'])}" for t, v in s["rows"].items())}, "mixed load")
    return rows


def accounting_table(results: dict[str, Any]) -> tuple[list[list[Any]], dict[str, int], bool]:
    """Every Locust run's requests per server: ok + expected + collateral = sent (= Locust's own count)."""
    rows: list[list[Any]] = []
    totals = {"requests": 0, "ok": 0, "expected": 0, "collateral": 0}
    all_ok = True
    for name, sc in results["scenarios"].items():
        for label, run in _locust_runs(sc):
            for model, a in (run.get("accounting_rows") or {}).items():
                rows.append([f"{name} · {label}", model, a["requests"], a["ok"], a["expected"], a["collateral"],
                             a["locust_requests"], "✓" if a["balanced"] else "✗ NO"])
                for k in totals:
                    totals[k] += a[k] or 0
                all_ok &= bool(a["balanced"])
    return rows, totals, all_ok


def _locust_runs(sc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    raw = sc.get("raw") or {}
    out = []
    if "run" in raw:
        out.append(("run", raw["run"]))
    for key, val in (raw.get("runs") or {}).items():
        if isinstance(val, list):
            out += [(f"{key} #{i + 1}", r) for i, r in enumerate(val)]
        elif isinstance(val, dict) and "stats" in val:
            out.append((key, val))
    return out


def generator_table(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, sc in results["scenarios"].items():
        for label, run in _locust_runs(sc):
            cpu = run.get("locust_cpu") or {}
            agg = (run.get("stats") or {}).get("Aggregated") or {}
            rows.append([f"{name} · {label}", run.get("users"), agg.get("rps"), cpu.get("max_process_core_share"),
                         "**generator-bound**" if run.get("generator_bound") else "no"])
    return rows


def build(results: dict[str, Any], outdir: Path) -> dict[str, Any]:
    """Write report.md, report.html and the charts into OUTDIR; return what was written."""
    outdir.mkdir(parents=True, exist_ok=True)
    c = Charts(results, outdir)
    st, m = results["settings"], results["machine"]
    d = Doc()
    title = "webmodels bench — processes vs threads vs an event loop, measured"
    d.h(1, title)
    d.p(f"Run of {results.get('started_at_iso', '?')} · {'quick' if st['quick'] else 'default'} plan · "
        f"{fmt(st['step_s'])} s per load step · total {fmt(results.get('elapsed_s'))} s · targets: {st['targets']} · "
        f"models: {', '.join(st['models'])}.")
    d.p(f"**Machine**: {m.get('cores_usable')} usable cores ({m.get('cpu_model') or '?'}), "
        f"{fmt(m.get('memory_gb'))} GB RAM, Linux {m.get('kernel')}, {m.get('python_impl')} {m.get('python')}; "
        f"load average at start {m.get('loadavg_at_start')}. **Pinning**: {st['pinning']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v) + ".")
    if st.get("noise_note"):
        d.note(st["noise_note"])

    d.h(2, "The table, measured")
    head = ["row"] + [x for x in MODELS if x in st["models"]] + ["conditions"]
    d.table(head, headline(results), text=True)
    acc_rows, totals, balanced = accounting_table(results)
    d.p(f"**Every request accounted**: {fmt(totals['requests'])} requests sent by Locust in "
        f"{len({r[0] for r in acc_rows})} runs = {fmt(totals['ok'])} ok + {fmt(totals['expected'])} expected "
        f"(the injected faults) + {fmt(totals['collateral'])} collateral — "
        + ("balanced in every run and equal to Locust's own count." if balanced else "**NOT balanced in every run** (see the accounting table)."))

    for name, sc in results["scenarios"].items():
        meta = results["scenario_meta"].get(name, {})
        d.h(2, meta.get("title", name))
        if sc.get("skipped"):
            d.note(f"Skipped: {sc['skipped']}")
            continue
        if sc.get("error"):
            d.note(f"Failed: {sc['error']}")
            continue
        SECTIONS.get(name, _generic)(d, c, sc, results)

    d.h(2, "Accounting, run by run")
    d.p("Per Locust run and server: `sent` (the locustfile's count), ok, expected (the injected fault requests), "
        "collateral, and Locust's own request count. Requests still in flight when a run stops are abandoned by "
        "Locust and counted nowhere.")
    d.table(["run", "server", "sent", "ok", "expected", "collateral", "Locust count", "adds up"],
            acc_rows + [["**total**", "", totals["requests"], totals["ok"], totals["expected"], totals["collateral"],
                         "", "✓" if balanced else "✗ NO"]])
    d.h(2, "The load generator")
    d.p("Locust's own CPU (psutil over its process tree; the busiest process's share of one core). A run whose "
        "Locust process used ≥ 90% of a core is marked **generator-bound**: its throughput is Locust's ceiling, "
        "not the server's. On this machine Locust has one core; adding `--processes` there would not add CPU.")
    d.table(["run", "users", "rps (all servers)", "Locust core share", "generator-bound"], generator_table(results))
    md = d.markdown()
    (outdir / "report.md").write_text(md)
    (outdir / "report.html").write_text(d.html(title))
    return {"markdown": "report.md", "html": "report.html", "charts": c.made}


# -- per-scenario sections ----------------------------------------------------------------------------------
def _generic(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    d.p("```\n" + json.dumps(sc["summary"], indent=1) + "\n```")


def sec_memory(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p("Each configuration started alone and idle; figures are summed over the server's process tree (median of "
        f"{sc['raw']['repetitions']} samples). USS = pages only that process has; PSS = shared pages split among "
        "the processes that share them (including unrelated processes mapping the same libraries, so PSS moves a "
        "little with whatever else runs); RSS counts every shared page in full, once per process.")
    d.table(["configuration", "processes", "threads", "RSS MiB", "USS MiB", "PSS MiB", "RSS / PSS", "/_lab/stats ms"],
            [[r["label"], r["processes"], r["threads_total"], r["rss"] / 2**20, r["uss"] / 2**20, r["pss"] / 2**20,
              round(r["rss"] / r["pss"], 2) if r["pss"] else None, r["stats_ms_median"]] for r in sc["raw"]["rows"]])
    d.table(["per extra unit (least-squares slope)", "RSS", "USS", "PSS"], [
        ["prefork worker, MiB", s.get("prefork_rss_per_worker_mb"), s.get("prefork_uss_per_worker_mb"),
         s.get("prefork_pss_per_worker_mb")],
        ["prefork worker with --gc-freeze, MiB", s.get("prefork_freeze_rss_per_worker_mb"),
         s.get("prefork_freeze_uss_per_worker_mb"), s.get("prefork_freeze_pss_per_worker_mb")],
        ["pool thread, KiB", s.get("threadpool_rss_per_thread_kb"), "–", s.get("threadpool_pss_per_thread_kb")]])
    ctx = _sc(results, "context")
    if ctx:
        d.p("Under load (the hello runs of the context-switching scenario), peak over the run:")
        d.table(["model", "RSS MiB", "USS MiB", "PSS MiB"],
                [[m, ctx["summary"][m].get("rss_peak_mb"), ctx["summary"][m].get("uss_peak_mb"),
                  ctx["summary"][m].get("pss_peak_mb")] for m in MODELS if m in ctx["summary"]])
    d.note("`/_lab/stats ms` is also the price of prefork's aggregated view: the counters come from the shared-memory "
           "board (a few reads), the bulk is psutil reading /proc for every process of the tree — it grows with workers.")
    if (img := chart_memory(c, sc)):
        d.img(img, "memory per configuration")


def sec_faults(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"The three servers side by side on the server core, {s['users_per_server']} Locust users each on "
        f"`/io?ms={s['io_ms']}`, and the locustfile's injector sends the fault to each server every "
        f"{s['fault_every_s']} s. When a thread-pool or event-loop process dies, the bench restarts it at once on the "
        "same port (as Docker's restart policy would, without back-off); a prefork worker is replaced by its master. "
        "Collateral = user requests that failed although they were not the fault; downtime = the longest stretch in "
        "which all of a server's requests failed; recovery = from an injected fault to the sending of the first user "
        "request after it that succeeded (median and range over every injection).")
    rows = []
    for f in ("crash", "segfault"):
        for m in MODELS:
            e = s.get(f"{f} {m}")
            if e:
                deaths = e.get("deaths_seen_by_server")
                if deaths is None and sc["raw"]["runs"].get(f):  # results written before the field existed
                    from .scenarios import _deaths
                    deaths = _deaths(sc["raw"]["runs"][f], m)
                rows.append([f, m, e["injected"], deaths, e["collateral"], e["collateral_per_fault_median"],
                             fmt_range(e["collateral_per_fault_range"]), e["downtime_ms_median"],
                             fmt_range(e["downtime_ms_range"]), e["recovery_ms_median"], fmt_range(e["recovery_ms_range"]),
                             e["process_restart_ms_median"], str(s["theory"].get(m, ""))])
    d.table(["fault", "model", "injected", "processes died", "collateral", "per fault (median)", "range", "downtime ms (median)", "range",
             "recovery ms (median)", "range", "process restart ms", "theory"], rows)
    d.note("`processes died` is the servers' own count (prefork: worker exits seen by the master; the others: "
           "restarts by the bench); it should equal `injected`. The injector sends each fault once, as a POST: an "
           "HTTP client may re-send an idempotent GET after the connection drops (geventhttpclient does, up to twice), "
           "and a re-sent crash would kill a second worker. More deaths than injections means exactly that happened.")
    if (img := chart_faults(c, sc)):
        d.img(img, "fault isolation")


def sec_hang(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"Side by side, {s['users_per_server']} users each on `/io?ms=50`; every {s['fault_every_s']} s the injector "
        f"sends `/fault/hang?s={s['hang_s']}` (longer than the run: a hang that never ends by itself). Prefork runs "
        f"with `--timeout {s['prefork_timeout_s']}`; the pool has {s['threadpool_threads']} threads. The watchdog "
        "variant runs the event loop alone with `--watchdog 1`, restarted by the bench when it exits.")
    rows = []
    for m in (*MODELS, "eventloop --watchdog 1"):
        e = s.get(m)
        if not e:
            continue
        what = {"prefork": f"{fmt(e.get('timeout_kills'))} workers killed for timeout; {fmt(e.get('workers_at_end'))} at end",
                "threadpool": f"busy threads max {fmt(e.get('busy_threads_max'))} of {fmt(e.get('pool_size'))}",
                "eventloop": f"loop lag max {fmt(e.get('loop_lag_max_ms'))} ms (as last seen); stats unanswered "
                             f"{fmt(e.get('stats_unanswered_s'))} s",
                "eventloop --watchdog 1": f"{fmt(e.get('restarts'))} restarts; recovery median "
                                          f"{fmt(e.get('recovery_ms_median'))} ms"}[m]
        rows.append([m, e.get("injected"), e.get("ok"), e.get("collateral"), e.get("ok_per_s_first_second"),
                     e.get("ok_per_s_last_second"), what])
    d.table(["model", "hangs", "ok", "collateral", "ok/s in second 1", "ok/s in the last full second", "what the server says"], rows)
    d.note("Requests stuck behind a hang when the run stops are abandoned, not failed: that is why a stalled loop "
           "shows few collateral failures — its requests just never come back. The ok/s lines below show it.")
    runs = sc["raw"]["runs"]
    lines = [(m, _ok_line(runs["plain"], m)) for m in MODELS if m in results["settings"]["models"]]
    if "watchdog" in runs:
        lines.append(("eventloop --watchdog", _ok_line(runs["watchdog"], "eventloop")))
    if (img := chart_timeline(c, sc, "hang.png", "Successful requests per second while hangs are injected",
                              "ok requests / s", lines, f"one run of {fmt(runs['plain']['duration_s'])} s, "
                              f"hang every {s['fault_every_s']} s")):
        d.img(img, "hang")


def _ok_line(run: dict[str, Any], model: str) -> list[list[float]]:
    from .scenarios import _ok_rate
    return _ok_rate(run, model)


def sec_leak(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
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
            lines.append((label, [[p["t"], p["totals"]["uss"] / 2**20] for p in samples if p.get("up")]))
    if (img := chart_timeline(c, sc, "leak.png", "Memory (USS, whole tree) while leaking", "MiB", lines,
                              f"runs of {fmt(runs['plain']['duration_s'])} s, {s['leak_mb_each']} MiB every "
                              f"{s['fault_every_s']} s; 1 run each")):
        d.img(img, "leak")


def sec_communication(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"{s['users_per_server']} users per server send `/counter?mode=unsafe` and `/counter?mode=locked` "
        "(read → yield 1 ms → write). Afterwards the bench reads every process's counters (`op=read`; for prefork, "
        "fresh connections until each worker answered) and compares their sum with the increments Locust saw "
        "succeed. Lost = successes − counter (clipped at 0: Locust abandons up to one in-flight request per user at "
        "stop, which the server still counts).")
    rows = []
    for m in MODELS:
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
    mem = _sc(results, "memory")
    if mem:
        d.p("The IPC cost of prefork's aggregated counters, as `GET /_lab/stats` time (median, ms): " + ", ".join(
            f"{k}: {fmt(v, 2)}" for k, v in mem["summary"]["stats_route_ms"].items()) + ".")
    if (img := chart_bars(c, "counter.png", "Lost updates (% of successful increments)", ["unsafe", "locked"],
                          {m: [s.get(f"{m} {mode}", {}).get("lost_pct") for mode in ("unsafe", "locked")]
                           for m in MODELS if f"{m} unsafe" in s}, "% lost",
                          f"one run of {fmt(sc['raw']['run']['duration_s'])} s")):
        d.img(img, "counter")


def sec_creation(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p("What is measured, exactly: prefork: SIGTTIN to the master → the new pid is listed in `/_lab/stats` (polled "
        "back to back, so it includes one stats round-trip), and → the new worker answers its first `/whoami` (fresh "
        "connections; it competes with the other worker in accept(), so this is an upper bound). Thread, task and raw "
        "`fork()` are timed in-process by a small Python snippet pinned to the server core (the servers do not expose "
        "them): start → the new thread / task / child process runs its first line.")
    d.table(["creation", "median", "range", "n"],
            [[k, v["median"], fmt_range(v["range"], 3), v["n"]] for k, v in s.items()])
    labels = ["worker → first answer", "worker → in stats", "fork()", "thread", "task"]
    keys = ["prefork worker: SIGTTIN → serves its first request (ms)", "prefork worker: SIGTTIN → visible in /_lab/stats (ms)",
            "os.fork() → child runs (ms)", "threading.Thread.start() → thread runs (ms)", "loop.create_task() → task runs (ms)"]
    if (img := chart_bars(c, "creation.png", "Creation overhead (median, ms, log scale)", labels,
                          {"median ms": [s.get(k, {}).get("median") for k in keys]}, "ms", "medians; n per row in the table",
                          logy=True)):
        d.img(img, "creation")


def sec_context(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"Each model alone on the server core, {s['users']} Locust users on `GET /` (hello) for one load step. Context "
        "switches: deltas over every thread of every process (`/proc/PID/task/*/status`) divided by the requests the "
        "server counted. (`/_lab/stats` reports psutil's per-process figure, which the kernel keeps for the main "
        "thread only — a pool's threads are invisible there; it is shown as `main thread / req`.)")
    d.table(["model", "rps", "p50 ms", "p99 ms", "voluntary / req", "involuntary / req", "main thread / req",
             "server CPU ms / req", "Locust core share", "generator-bound"],
            [[m, e.get("rps"), e.get("p50_ms"), e.get("p99_ms"), e.get("voluntary_per_request"),
              e.get("involuntary_per_request"), e.get("main_thread_ctx_per_request"), e.get("server_cpu_ms_per_request"), e.get("locust_cpu_cores"),
              "**yes**" if e.get("generator_bound") else "no"] for m, e in s.items() if isinstance(e, dict)])
    w = _sc(results, "wrk")
    if w:
        d.p(f"**Cross-check with wrk** ({w['summary'].get('settings')}): " + "; ".join(
            f"{m} {fmt(w['summary'][m]['rps_median'])} rps (range {fmt_range(w['summary'][m]['rps_range'], 0)})"
            for m in MODELS if m in w["summary"]) + ". Where wrk is far above Locust, Locust's figure is the "
            "generator's ceiling, not the server's.")
    ms = [m for m in MODELS if m in s]
    if (img := chart_bars(c, "context.png", "Context switches per request (same hello load, each model alone)", ms,
                          {"voluntary": [s[m].get("voluntary_per_request") for m in ms],
                           "involuntary": [s[m].get("involuntary_per_request") for m in ms]}, "switches / request",
                          f"one run of {results['settings']['step_s']} s per model")):
        d.img(img, "context switches")


def sec_wrk(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"`{s.get('settings')}` against `GET /`, each model alone on the server core, 16 connections (≤ the pool's "
        "threads, so a pool that pins keep-alive connections is not flattered).")
    d.table(["model", "rps median", "range"], [[m, s[m]["rps_median"], fmt_range(s[m]["rps_range"], 0)]
                                               for m in MODELS if m in s])


def sec_multicore(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"Each model alone, allowed on all {s['cores']} cores (Locust shares the last one: its load here is light), "
        f"`/cpu?ms={s['cpu_ms']}` at rising users; a side probe measures `GET /` latency every 50 ms during the run. "
        "Prefork has 4 workers, the pool 32 threads.")
    rows = sc["raw"]["rows"]
    d.table(["model", "users", "rps", "p50 ms", "p99 ms", "`/` probe p50 ms", "`/` probe p99 ms", "generator-bound"],
            [[r["model"], r["users"], r["rps"], r["p50_ms"], r["p99_ms"], r["probe_p50_ms"], r["probe_p99_ms"],
              "**yes**" if r["generator_bound"] else "no"] for r in rows])
    if (img := chart_sweep(c, "multicore.png", f"/cpu?ms={s['cpu_ms']}: throughput, and the latency of GET / beside it",
                           rows, "users", [("rps", "requests / s (/cpu)"), ("probe_p99_ms", "p99 of GET / (ms, log)")],
                           f"one run of {results['settings']['step_s']} s per point", logy=(False, True))):
        d.img(img, "multi-core")


def sec_io(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    d.p("The three servers side by side on the server core, the same number of users each, `/io?ms=50`. Default "
        "sizes: prefork 4 workers (4 requests at a time), the pool 32 threads (+32 queued connections, then a fast "
        "503), the loop unbounded. Failures are mostly the pool's 503s.")
    rows = sc["raw"]["rows"]
    d.table(["model", "users", "ok rps", "failures", "p50 ms", "p99 ms", "generator-bound"],
            [[r["model"], r["users"], r["ok_rps"], r["failures"], r["p50_ms"], r["p99_ms"],
              "**yes**" if r["generator_bound"] else "no"] for r in rows])
    if (img := chart_sweep(c, "io.png", "/io?ms=50 at rising users per server", rows, "users",
                           [("ok_rps", "ok requests / s"), ("p99_ms", "p99 latency (ms, log)")],
                           f"one run of {results['settings']['step_s']} s per point", logx=True, logy=(False, True))):
        d.img(img, "io")


def sec_overthreading(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"The thread pool alone on the server core with `--threads N --queue 1024`, {s['users']} users on the mixed "
        "workload (4 hello : 3 `/io?ms=50` : 2 `/bytes` : 1 `/cpu?ms=2`).")
    rows = sc["raw"]["rows"]
    d.table(["threads", "rps", "p50 ms", "p99 ms", "failures", "involuntary ctx / req", "RSS MiB", "generator-bound"],
            [[r["threads"], r["rps"], r["p50_ms"], r["p99_ms"], r["failures"], r["involuntary_per_request"], r["rss_mb"],
              "**yes**" if r["generator_bound"] else "no"] for r in rows])
    if (img := chart_sweep(c, "overthreading.png", "Thread-pool size sweep (mixed load)", rows, "threads",
                           [("rps", "requests / s"), ("p99_ms", "p99 ms")], f"one run of {results['settings']['step_s']} s "
                           "per size", series_key=None, logx=True)):
        d.img(img, "over-threading")


SECTIONS: dict[str, Callable[[Doc, Charts, dict[str, Any], dict[str, Any]], None]] = {
    "memory": sec_memory, "faults": sec_faults, "hang": sec_hang, "leak": sec_leak,
    "communication": sec_communication, "creation": sec_creation, "context": sec_context, "wrk": sec_wrk,
    "multicore": sec_multicore, "io": sec_io, "overthreading": sec_overthreading,
}
