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

from ..lab import SERVERS as LAB_SERVERS

# column order of the report: the pure models, then the hybrids; a lab server not named here still gets a column,
# last (a model missing from a run's --models has none)
_ORDER = ("prefork", "threadpool", "eventloop", "greenthreads", "hybrid-threads", "hybrid-loop")
REPORT_MODELS = tuple(m for m in _ORDER if m in LAB_SERVERS) + tuple(m for m in LAB_SERVERS if m not in _ORDER)
# a model's colour is the lab's (the Servers tab draws it the same); a variant of a model, a lighter shade of it
COLORS = {**{name: s.color for name, s in LAB_SERVERS.items()},
          "prefork --max-requests": "#98df8a", "eventloop --watchdog": "#ff9896"}


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


def in_words(n: int) -> str:
    return {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}.get(n, str(n))


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


def guard(fn: Callable[..., str | None]) -> Callable[..., str | None]:
    def wrapped(*a: Any, **kw: Any) -> str | None:
        try:
            return fn(*a, **kw)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
            return None  # a scenario with missing data gets no chart, the table still says what is there
    return wrapped


@guard
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


@guard
def chart_sweep(c: Charts, name: str, title: str, rows: list[dict[str, Any]], x: str, panels: list[tuple[str, str]],
                what: str, series_key: str | None = "model", logx: bool = False, logy: tuple[bool, ...] = ()) -> str | None:
    fig, axes = c.plt.subplots(1, len(panels), figsize=(11, 4))
    axes = axes if len(panels) > 1 else [axes]
    groups = sorted({r[series_key] for r in rows}, key=lambda m: REPORT_MODELS.index(m) if m in REPORT_MODELS else 9) \
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


@guard
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
def sc_of(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A scenario's result if it ran and measured (not skipped, not failed)."""
    sc = results["scenarios"].get(name)
    if not sc or sc.get("skipped") or sc.get("error"):
        return None
    return sc


def headline(results: dict[str, Any]) -> list[list[str]]:
    """The processes-vs-threads table: one row per scenario, one column per model, conditions, why."""
    from .scenarios import SCENARIOS
    rows: list[list[str]] = []
    models = [m for m in REPORT_MODELS if m in results["settings"]["models"]]
    for name, scenario in SCENARIOS.items():
        sc = sc_of(results, name)
        if not sc or not scenario.row or scenario.cells is None:
            continue
        cells, note = scenario.cells(sc, results, models)
        why = (results.get("scenario_meta", {}).get(name) or {}).get("why") or scenario.why
        rows.append([scenario.row] + [cells.get(m, "–") for m in models] + [note, why])
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
    from .scenarios import SCENARIOS
    outdir.mkdir(parents=True, exist_ok=True)
    c = Charts(results, outdir)
    st, m = results["settings"], results["machine"]
    d = Doc()
    title = "webmodels bench — processes vs threads vs an event loop vs green threads, measured"
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
    head = ["row"] + [x for x in REPORT_MODELS if x in st["models"]] + ["conditions", "why"]
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
        scenario = SCENARIOS.get(name)
        if scenario and meta.get("why", scenario.why):
            d.p(f"**Why**: {meta.get('why', scenario.why)}.")
        (scenario.section if scenario else _generic)(d, c, sc, results)

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



def _generic(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    d.p("```\n" + json.dumps(sc["summary"], indent=1) + "\n```")
