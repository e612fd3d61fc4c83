"""Fault isolation: crash and segfault under steady /io load, every model side by side, repeated."""

from __future__ import annotations

from typing import Any

from ...config import MODEL_ENGINE
from ..kit import HYBRIDS, MASTER_MODELS, Bench, med, rng, side_by_side
from ..report import COLORS, REPORT_MODELS, Charts, Doc, fmt, fmt_range, guard, in_words
from . import Cells, Scenario


def run(bench: Bench) -> dict[str, Any]:
    """Crash and segfault under steady /io load, repeated; servers restarted on exit like Docker would."""
    p = bench.plan
    users = p.pick(8, 12)
    duration = p.pick(4.0, max(3 * p.step, 10.0))
    every = p.pick(1.3, 2.5)
    reps = {"crash": p.pick(1, 3), "segfault": p.pick(1, 2)}
    runs: dict[str, list[dict[str, Any]]] = {}
    for fault, n in reps.items():
        for i in range(n):
            runs.setdefault(fault, []).append(side_by_side(
                bench, f"faults · {fault} run {i + 1}/{n} · all models", {}, users, duration, "io",
                restart=bench.native, io_ms=50, fault=fault, fault_every=every))
    summary: dict[str, Any] = {"users_per_server": users, "io_ms": 50, "fault_every_s": every}
    for fault, rs in runs.items():
        for m in p.models:
            rows = [r["accounting_rows"].get(m) for r in rs if r["accounting_rows"].get(m)]
            per_inj = [r["collateral"] / r["injected"] for r in rows if r.get("injected")]
            recov = [x for r in rows for x in (r.get("recoveries_ms") or [])]
            restart_ms = [d["restart_ms"] for r in rs for d in r["restarts"].get(m, []) if d.get("restart_ms")]
            summary[f"{fault} {m}"] = {
                "collateral": sum(r["collateral"] for r in rows), "injected": sum(r["injected"] or 0 for r in rows),
                "collateral_per_fault_median": med(per_inj), "collateral_per_fault_range": rng(per_inj),
                "downtime_ms_median": med([r["downtime_ms"] for r in rows]),
                "downtime_ms_range": rng([r["downtime_ms"] for r in rows]),
                "recovery_ms_median": med(recov), "recovery_ms_range": rng(recov),
                "process_restart_ms_median": med(restart_ms), "server_restarts": len(restart_ms),
                "runs": len(rows), "deaths_seen_by_server": deaths(rs, m),
            }
    summary["theory"] = {m: theory(m, users) for m in p.models}
    return {"raw": {"runs": runs, "repetitions": reps}, "summary": summary}


def theory(model: str, users: int) -> str | int:
    """What a crash should cost MODEL: a sync worker only its own request; a worker serving many, its share; one
    process (a pool, a loop, green threads), everything in flight and what arrives before it is back."""
    if model not in MASTER_MODELS:
        return f"≈ in flight at the crash (≈ {users} users) + refused while restarting"
    if MODEL_ENGINE[model] == "sync":
        return 0
    return f"≈ that worker's in flight (≈ {users} users / workers), no downtime"


def deaths(runs: list[dict[str, Any]], model: str) -> int:
    """Processes that died, as the servers saw it: a master counts its workers' exits; for the
    single-process models, the bench's restarts. Compared with `injected`, it shows whether every injected
    fault hit exactly once."""
    if model in MASTER_MODELS:
        total = 0
        for r in runs:
            exits = ((r["final_stats"].get(model) or {}).get("counters") or {}).get("worker_exits") or {}
            total += sum(v for k, v in exits.items() if k in ("crash", "signal"))
        return total
    return sum(len(r["restarts"].get(model, [])) for r in runs)


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    return ({m: (f"{fmt(s[f'crash {m}']['collateral_per_fault_median'])} collateral/crash, down "
                 f"{fmt(s[f'crash {m}']['downtime_ms_median'])} ms") for m in models if f"crash {m}" in s},
            "crash under /io load; theory: prefork 0, shared fate ≈ in-flight")


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"The {in_words(len(results['settings']['models']))} servers side by side on the server core, "
        f"{s['users_per_server']} Locust users each on "
        f"`/io?ms={s['io_ms']}`, and the locustfile's injector sends the fault to each server every "
        f"{s['fault_every_s']} s. When a thread-pool, event-loop or green-threads process dies, the bench restarts it at "
        "once on the same port (as Docker's restart policy would, without back-off); a prefork worker is replaced by its master. "
        "Collateral = user requests that failed although they were not the fault; downtime = the longest stretch in "
        "which all of a server's requests failed; recovery = from an injected fault to the sending of the first user "
        "request after it that succeeded (median and range over every injection).")
    rows = []
    for f in ("crash", "segfault"):
        for m in REPORT_MODELS:
            e = s.get(f"{f} {m}")
            if e:
                died = e.get("deaths_seen_by_server")
                if died is None and sc["raw"]["runs"].get(f):  # results written before the field existed
                    died = deaths(sc["raw"]["runs"][f], m)
                rows.append([f, m, e["injected"], died, e["collateral"], e["collateral_per_fault_median"],
                             fmt_range(e["collateral_per_fault_range"]), e["downtime_ms_median"],
                             fmt_range(e["downtime_ms_range"]), e["recovery_ms_median"], fmt_range(e["recovery_ms_range"]),
                             e["process_restart_ms_median"], str(s["theory"].get(m, ""))])
    d.table(["fault", "model", "injected", "processes died", "collateral", "per fault (median)", "range", "downtime ms (median)", "range",
             "recovery ms (median)", "range", "process restart ms", "theory"], rows)
    d.note("`processes died` is the servers' own count (prefork: worker exits seen by the master; the others: "
           "restarts by the bench); it should equal `injected`. The injector sends each fault once, as a POST: an "
           "HTTP client may re-send an idempotent GET after the connection drops (geventhttpclient does, up to twice), "
           "and a re-sent crash would kill a second worker. More deaths than injections means exactly that happened.")
    if any(h in results["settings"]["models"] for h in HYBRIDS):
        d.note("For the hybrids, collateral is a lower bound: Locust's HTTP client (geventhttpclient) re-sends an "
               "idempotent GET whose connection closed before the answer (RFC 9110 §9.2.2 allows it), and with a "
               "second worker alive the re-sent request succeeds — a request that died with the crashed worker is "
               "then counted as ok, only slower. For the single-process models the re-send is refused and counted. "
               "A raw client without retries (the engines' tests) shows the hybrids' true in-flight loss.")
    if (img := chart(c, sc)):
        d.img(img, "fault isolation")


@guard
def chart(c: Charts, sc: dict[str, Any]) -> str | None:
    s = sc["summary"]
    faults = [f for f in ("crash", "segfault") if any(k.startswith(f + " ") for k in s)]
    models = [m for m in REPORT_MODELS if any(f"{f} {m}" in s for f in faults)]
    gap = len(models) + 1
    fig, axes = c.plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, title, unit) in zip(axes, (("collateral_per_fault", "Collateral failures per injected fault", ""),
                                             ("recovery_ms", "Recovery: fault → next success", " ms"))):
        for j, f in enumerate(faults):
            for i, m in enumerate(models):
                e = s.get(f"{f} {m}")
                if not e:
                    continue
                med_, r = e.get(f"{key}_median"), e.get(f"{key}_range")
                if med_ is None:
                    continue
                x = j * gap + i
                err = [[med_ - r[0]], [r[1] - med_]] if r else None
                ax.bar(x, med_, color=COLORS[m], label=m if j == 0 else None, yerr=err, capsize=4)
        ax.set_xticks([j * gap + (len(models) - 1) / 2 for j in range(len(faults))], faults)
        ax.set_title(title + (unit and f" ({unit.strip()})"), fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    reps = sc["raw"].get("repetitions", {})
    c.footer(fig, f"steady /io?ms=50 load, {s.get('users_per_server')} users per server, a fault every "
             f"{s.get('fault_every_s')} s, runs: {reps}; bars = median, whiskers = range")
    fig.subplots_adjust(bottom=0.15)
    return c.save(fig, "faults.png")


SCENARIO = Scenario(
    name="faults", row="fault isolation", title="Fault isolation: crash and segfault under load",
    why="a crash takes its whole process down: a thread pool, a loop or green threads lose every request in flight, a "
        "worker only its own",
    run=run, section=section, cells=cells, quick_s=14, full_s=75)
