"""Many idle clients: hold N idle keep-alive connections against each model, and probe GET / meanwhile.

Each model runs alone with `--keepalive 120`. A raw asyncio client (the bench process, not Locust) opens N
connections, sends one `GET /` on each and waits a moment for the answer, then leaves them idle. Counted
per connection, so the prefork lesson shows: a sync worker holds the one connection it answered, the rest
are accepted by the kernel into the listen backlog (connected, never answered) or not even that (backlog
full: the SYN is dropped and the connect times out). Meanwhile one more client sends `GET /` on a fresh
connection every 20 ms (p50/p99). Memory is read from outside (psutil over the server's process tree)
before and after, so the cost per held connection is the server's, whatever it reports about itself.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any
from urllib.parse import urlsplit

import psutil

from ...config import DEFAULTS
from .. import rawclient
from ..kit import Bench, native_only
from ..report import COLORS, REPORT_MODELS, Charts, Doc, fmt, guard
from . import Cells, Scenario

FD_MARGIN = 256  # the bench's own files, Locust pipes, the probe


def raise_nofile(want: int) -> dict[str, int]:
    """Raise RLIMIT_NOFILE's soft limit toward WANT (at most the hard limit); children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = soft
    if soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return {"soft_before": soft, "soft_used": target, "hard": hard}


def tree_memory(pid: int) -> dict[str, int]:
    """RSS and USS summed over PID and its descendants (USS: what the tree would free if it exited)."""
    rss = uss = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {"rss": 0, "uss": 0, "processes": 0}
    for p in procs:
        try:
            info = p.memory_full_info()
            rss += info.rss
            uss += info.uss
        except psutil.Error:
            continue
    return {"rss": rss, "uss": uss, "processes": len(procs)}


async def _hold(host: str, port: int, n: int, pid: int, *, connect_s: float, answer_s: float,
                probe_s: float) -> dict[str, Any]:
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    outcome = {"connected": 0, "answered": 0, "stuck": 0, "not_connected": 0, "refused_status": 0}
    sem = asyncio.Semaphore(2048)  # connects in flight: a dropped SYN costs connect_s, so not too few
    await asyncio.sleep(0.5)  # workers finish booting, threads reach their first wait: a fair "before"
    before = tree_memory(pid)
    t0 = time.monotonic()

    async def one() -> None:
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), connect_s)
            except (OSError, asyncio.TimeoutError):
                outcome["not_connected"] += 1
                return
        outcome["connected"] += 1
        conns.append((reader, writer))
        writer.write(rawclient.HELLO)
        try:
            status, _ = await asyncio.wait_for(rawclient.read_response(reader), answer_s)
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            outcome["stuck"] += 1
            return
        if status == 200:
            outcome["answered"] += 1
        else:
            outcome["refused_status"] += 1

    await asyncio.gather(*(one() for _ in range(n)))
    open_s = time.monotonic() - t0
    await asyncio.sleep(0.5)  # let the server settle (buffers, lazily grown structures)
    after = tree_memory(pid)
    probe = rawclient.Probe(host, port, interval=0.02, timeout=1.0)
    await probe.run(probe_s)
    await asyncio.sleep(0.05)
    open_at_end = sum(1 for r, w in conns if not r.at_eof() and not w.is_closing())
    for _, w in conns:
        w.close()
    return {**outcome, "open_at_end": open_at_end, "open_s": round(open_s, 2), "rss_before": before["rss"],
            "rss_after": after["rss"], "uss_before": before["uss"], "uss_after": after["uss"],
            "processes": after["processes"], "probe": probe.summary()}


def _loop_run(coro: Any) -> Any:
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def run(bench: Bench) -> dict[str, Any]:
    """N idle keep-alive connections per model: how many are held, memory per connection, probe latency."""
    if (skip := native_only(bench, "holding thousands of connections (the fd limit is this machine's)")):
        return skip
    p = bench.plan
    want = p.connections or p.pick(200, 10000)
    limits = raise_nofile(want + FD_MARGIN)
    n = min(want, limits["soft_used"] - FD_MARGIN)
    connect_s, answer_s, probe_s = 1.0, p.pick(1.0, 2.0), p.pick(p.step, 5.0)  # quick: one load step
    per_model: dict[str, Any] = {}
    for m in p.models:
        bench.progress.step(f"many idle clients · {n} connections · {m}", n / 2000 + answer_s + probe_s + 1.5)
        with bench.server(m, ["--keepalive", "120", *sized(m, n)]) as srv:
            u = urlsplit(srv.url)
            r = _loop_run(_hold(u.hostname or "127.0.0.1", u.port or 80, n, srv.pid, connect_s=connect_s,
                                answer_s=answer_s, probe_s=probe_s))
        held = r["answered"]
        r["rss_per_conn_kib"] = round((r["rss_after"] - r["rss_before"]) / held / 1024, 2) if held else None
        r["uss_per_conn_kib"] = round((r["uss_after"] - r["uss_before"]) / held / 1024, 2) if held else None
        per_model[m] = r
    summary: dict[str, Any] = {"connections": n, "connections_asked": want, "rlimit_nofile": limits,
                               "connect_timeout_s": connect_s, "answer_timeout_s": answer_s, "probe_s": probe_s}
    for m, r in per_model.items():
        summary[m] = {"answered": r["answered"], "stuck": r["stuck"], "not_connected": r["not_connected"],
                      "refused": r["refused_status"],
                      "open_at_end": r["open_at_end"], "rss_per_conn_kib": r["rss_per_conn_kib"],
                      "probe_p50_ms": r["probe"]["p50_ms"], "probe_p99_ms": r["probe"]["p99_ms"],
                      "probe_success_pct": r["probe"]["success_pct"]}
    return {"raw": {"per_model": per_model}, "summary": summary}


def sized(model: str, n: int) -> list[str]:
    """Green threads hold one greenlet per connection, bounded by --greenlets (default 1000): room for N and the probe,
    so the row measures what a held connection costs, not the admission bound (the pool parks idle sockets instead)."""
    return ["--greenlets", str(max(DEFAULTS["greenlets"], n + FD_MARGIN))] if model == "greenthreads" else []


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    n = s["connections"]
    out = {}
    for m in models:
        e = s.get(m)
        if not e:
            continue
        text = f"{fmt(e['answered'])}/{fmt(n)} answered"
        if e.get("refused"):
            text += f" ({fmt(e['refused'])} refused: non-200)"
        if e["stuck"] or e["not_connected"]:
            text += f" ({fmt(e['stuck'])} stuck in the backlog, {fmt(e['not_connected'])} not connected)"
        if enough_held(e, n):
            text += f"; +{fmt(e['rss_per_conn_kib'])} KiB RSS/conn"
        else:  # a few held connections: dividing the tree's RSS noise by 4 would invent a cost per connection
            text += "; KiB/conn: too few held to say"
        text += f"; probe p99 {fmt(e['probe_p99_ms'])} ms"
        if e["probe_success_pct"] is not None and e["probe_success_pct"] < 100:
            text += f" ({fmt(e['probe_success_pct'])}% answered)"
        out[m] = text
    return out, f"{fmt(n)} idle keep-alive connections, --keepalive 120"


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    lim = s["rlimit_nofile"]
    d.p(f"Each model alone with `--keepalive 120` (green threads also with `--greenlets "
        f"{sized('greenthreads', s['connections'])[1]}`: one greenlet per connection, and room for them all). A raw asyncio client opens {fmt(s['connections'])} connections "
        f"(asked: {fmt(s['connections_asked'])}; `--connections N`), sends one `GET /` on each and waits "
        f"{fmt(s['answer_timeout_s'])} s for its answer, then keeps them idle while a probe sends `GET /` on a fresh "
        f"connection every 20 ms for {fmt(s['probe_s'])} s (1 s timeout). Memory: RSS of the server's process tree "
        "(psutil, from outside) after minus before, divided by the connections answered. File descriptors: soft "
        f"limit {fmt(lim['soft_before'])} raised to {fmt(lim['soft_used'])} (hard {fmt(lim['hard'])}); the servers "
        "inherit it.")
    rows = []
    for m in REPORT_MODELS:
        r = sc["raw"]["per_model"].get(m)
        if not r:
            continue
        rows.append([m, r["connected"], r["answered"], r["refused_status"], r["stuck"], r["not_connected"],
                     r["open_at_end"],
                     (r["rss_after"] - r["rss_before"]) / 2**20, r["rss_per_conn_kib"], r["uss_per_conn_kib"],
                     r["probe"]["p50_ms"], r["probe"]["p99_ms"], r["probe"]["success_pct"], r["open_s"]])
    d.table(["model", "connected", "answered (held)", "refused (non-200)", "stuck (no answer)", "not connected", "still open at end",
             "RSS growth MiB", "RSS KiB / conn", "USS KiB / conn", "probe p50 ms", "probe p99 ms", "probe answered %",
             "open time s"], rows)
    d.note("Prefork's sync workers each hold the one connection they answered until `--keepalive` expires; every "
           "other connection waits in the listen backlog (connected by the kernel, never answered) or, once the "
           "backlog is full, is not even connected. The probe waits behind them. A thread pool that parks idle "
           "connections in a selector and a loop hold them all for a few KiB each; green threads hold each in a "
           "parked greenlet (its stack is copied out of the C stack when it switches away).")
    if (img := chart(c, sc)):
        d.img(img, "many idle clients")


def enough_held(r: dict[str, Any], n: int) -> bool:
    """Divide memory growth by the connections held only when there are enough of them to mean something."""
    return r["answered"] >= max(20, n // 10)


@guard
def chart(c: Charts, sc: dict[str, Any]) -> str | None:
    per, n = sc["raw"]["per_model"], sc["summary"]["connections"]
    ms = [m for m in REPORT_MODELS if m in per]
    fig, (left, right) = c.plt.subplots(1, 2, figsize=(11, 4))
    bottom = [0] * len(ms)
    for key, label, color in (("answered", "answered (held)", "#55a868"), ("refused_status", "refused (non-200)",
                                                                             "#dd8452"),
                              ("stuck", "connected, never answered", "#c44e52"),
                              ("not_connected", "not connected", "#8c8c8c")):
        vals = [per[m][key] for m in ms]
        left.bar(range(len(ms)), vals, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    left.set_xticks(range(len(ms)), ms, fontsize=8.5, rotation=25, ha="right")
    left.set_title(f"{fmt(n)} idle keep-alive connections: who got an answer", fontsize=11)
    left.legend(fontsize=7.5)
    vals = [per[m]["rss_per_conn_kib"] if enough_held(per[m], n) else None for m in ms]
    right.bar(range(len(ms)), [v or 0 for v in vals], color=[COLORS.get(m) for m in ms])
    for x, v in enumerate(vals):
        right.annotate(fmt(v, 2) if v is not None else "too few held", (x, v or 0), ha="center", fontsize=7.5,
                       xytext=(0, 2), textcoords="offset points")
    right.set_xticks(range(len(ms)), ms, fontsize=8.5, rotation=25, ha="right")
    right.set_title("RSS growth per held connection (KiB)", fontsize=11)
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.subplots_adjust(bottom=0.24, wspace=0.25)
    c.footer(fig, "RSS of the server's process tree (psutil) after − before, / connections answered")
    return c.save(fig, "idle.png")


SCENARIO = Scenario(
    name="idle", row="many idle clients", title="Many idle clients: held connections, memory, probe latency",
    why="an idle connection pins a sync worker, but costs a parked selector entry or a loop's few KiB",
    run=run, section=section, cells=cells, quick_s=20, full_s=80)
