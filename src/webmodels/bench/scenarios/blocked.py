"""A call that blocks in C: who keeps answering while one request sleeps 2 s where no patch reaches.

`/io-in-c?ms=2000` sleeps inside C (ctypes nanosleep): the OS thread that runs it blocks, and the interpreter
cannot switch away from it — gevent's monkey-patching turns `time.sleep` into a switch to another greenlet, but
it never sees a C library's own sleep. Every model side by side on the server core; per model, LANES clients
each send `GET /` on a fresh connection every INTERVAL_S, and after a short while one more client sends the
blocking request once. Counted from the clients' clocks:

- the block's window: the 2 s before the blocking request's answer arrived (the server may have started it
  later than it was sent, never earlier than 2 s before answering), less MARGIN_S at each end;
- answered during the block: `GET /` requests both sent and answered inside that window. A model whose only
  thread is the blocked one (a loop, green threads) cannot answer one: it reads nothing until the block ends,
  and the answers it then writes arrive after the blocking request's own;
- the longest wait of a `GET /`: what a client of that model felt.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import rawclient
from ..kit import Bench, start_all, stop_all
from ..report import COLORS, REPORT_MODELS, Charts, Doc, fmt, guard
from . import Cells, Scenario

BLOCK_MS = 2000
LANES = 4  # several clients: one whose connection a blocked loop worker had already accepted waits with it
INTERVAL_S = 0.02
BEFORE_S = 0.5  # probes alone, then the blocking request
MARGIN_S = 0.2
REQUEST = f"GET /io-in-c?ms={BLOCK_MS} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()


async def _lane(host: str, port: int, until: list[float], out: list[list[Any]]) -> None:
    """Send GET / every INTERVAL_S (fresh connection, one at a time) until UNTIL[0]; record [sent, done, ok]."""
    timeout = BLOCK_MS / 1000 + 5  # longer than the block: a stalled model's answer comes, late
    while (now := time.monotonic()) < until[0]:
        ms, _ = await rawclient.timed_get(host, port, timeout)
        out.append([now, time.monotonic(), int(ms is not None)])
        await asyncio.sleep(max(0.0, INTERVAL_S - (time.monotonic() - now)))


async def _one(host: str, port: int) -> dict[str, Any]:
    """Probe lanes, then the blocking request; the figures of one server."""
    until = [time.monotonic() + BEFORE_S + BLOCK_MS / 1000 + 6]  # a bound; moved closer once the block ended
    probes: list[list[Any]] = []
    lanes = [asyncio.create_task(_lane(host, port, until, probes)) for _ in range(LANES)]
    await asyncio.sleep(BEFORE_S)
    sent = time.monotonic()
    ms, why = await rawclient.timed_get(host, port, BLOCK_MS / 1000 + 10, REQUEST)
    answered = time.monotonic()
    until[0] = min(until[0], answered + BEFORE_S)
    await asyncio.gather(*lanes)
    return {"blocker": {"sent": sent, "answered": answered, "ms": None if ms is None else round(ms, 1),
                        "outcome": why},
            "probes": probes}


def figures(raw: dict[str, Any]) -> dict[str, Any]:
    """The counts of one server's run (times relative to the blocking request's send)."""
    b, probes = raw["blocker"], raw["probes"]
    w0, w1 = b["answered"] - BLOCK_MS / 1000 + MARGIN_S, b["answered"] - MARGIN_S
    inside = [p for p in probes if w0 <= p[0] <= w1]
    waits = [done - sent for sent, done, _ in probes]
    return {"blocker_ms": b["ms"], "blocker_outcome": b["outcome"], "window_s": round(w1 - w0, 2),
            "sent_during": len(inside), "answered_during": sum(1 for _, done, ok in inside if ok and done <= w1),
            "probes": len(probes), "probes_failed": sum(1 for *_, ok in probes if not ok),
            "longest_wait_ms": round(max(waits) * 1000, 1) if waits else None}


def run(bench: Bench) -> dict[str, Any]:
    """Every model at once: GET / from LANES clients, and one /io-in-c?ms=2000 in the middle."""
    p = bench.plan
    servers = {m: bench.server(m) for m in p.models}
    bench.progress.step(f"a call blocking in C · /io-in-c?ms={BLOCK_MS} · all models", BLOCK_MS / 1000 + 2.5)
    start_all(servers)
    try:
        targets = {m: rawclient.address(s.url) for m, s in servers.items()}

        async def all_at_once() -> list[dict[str, Any]]:
            return await asyncio.gather(*(_one(*targets[m]) for m in targets))
        got = dict(zip(targets, asyncio.run(all_at_once())))
    finally:
        stop_all(servers)
    raw = {}
    for m, r in got.items():  # times relative to the blocking request's send: readable, and all one needs
        t0 = r["blocker"]["sent"]
        raw[m] = {"blocker": {**r["blocker"], "sent": 0.0, "answered": round(r["blocker"]["answered"] - t0, 4)},
                  "probes": [[round(s - t0, 4), round(d - t0, 4), ok] for s, d, ok in r["probes"]]}
    summary: dict[str, Any] = {"block_ms": BLOCK_MS, "lanes": LANES, "interval_ms": round(INTERVAL_S * 1000),
                               "margin_s": MARGIN_S}
    summary.update({m: figures(r) for m, r in raw.items()})
    return {"raw": {"per_model": raw}, "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    out = {}
    for m in models:
        if (e := s.get(m)) is None:
            continue
        out[m] = (f"{fmt(e['answered_during'])} answered during the block; `/` waited up to "
                  f"{fmt(e['longest_wait_ms'])} ms")
    return out, (f"one GET /io-in-c?ms={s['block_ms']} (a sleep in C) while {s['lanes']} clients send GET / every "
                 f"{s['interval_ms']} ms")


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"Every model with its default size, side by side on the server core. {s['lanes']} clients per server "
        f"send `GET /` on a fresh connection every {s['interval_ms']} ms (one at a time each); after "
        f"{fmt(BEFORE_S)} s one more sends `GET /io-in-c?ms={s['block_ms']}`, which sleeps in C (ctypes "
        "`nanosleep`, in 50 ms pieces): its OS thread blocks where no monkey-patch reaches. *During the block*: the "
        f"{fmt(s['block_ms'] / 1000)} s before its answer arrived, less {fmt(s['margin_s'])} s at each end (a busy "
        "server may start it late, never early); a `GET /` counts if it was both sent and answered inside.")
    rows = []
    for m in REPORT_MODELS:
        if (e := s.get(m)) is None:
            continue
        rows.append([m, e["answered_during"], e["sent_during"], e["longest_wait_ms"], e["blocker_ms"], e["probes"],
                     e["probes_failed"]])
    d.table(["model", "`/` answered during the block", "`/` sent during the block", "longest wait of `/` ms",
             "the blocking request ms", "`/` sent in all", "`/` failed"], rows)
    d.note("A thread pool's other threads and a master's other workers keep serving: the kernel schedules around an "
           "OS thread that sleeps. An event loop and green threads have one thread: a sleep in C stops every "
           "connection of the process — gevent patches `time.sleep`, `socket` and `select`, not a C library. A "
           "hybrid loses the one worker (for a loop worker, with the connections it had already accepted).")
    if (img := chart(c, sc)):
        d.img(img, "a call blocking in C")


BUCKET_S = 0.1


@guard
def chart(c: Charts, sc: dict[str, Any]) -> str | None:
    """`GET /` answered per 100 ms around the block, one strip per model, the block shaded in each."""
    s, per = sc["summary"], sc["raw"]["per_model"]
    ms = [m for m in REPORT_MODELS if m in per]
    fig, axes = c.plt.subplots(len(ms), 1, figsize=(11, 1.2 + 0.72 * len(ms)), sharex=True, sharey=True)
    axes = axes if len(ms) > 1 else [axes]
    top = max(1, round(s["lanes"] * BUCKET_S * 1000 / s["interval_ms"]))  # answers per bucket when all flows
    for ax, m in zip(axes, ms):
        done = [d for _, d, ok in per[m]["probes"] if ok]
        lo, hi = int(min(done) // BUCKET_S), int(max(done) // BUCKET_S)
        counts = {b: 0 for b in range(lo, hi + 1)}
        for d in done:
            counts[int(d // BUCKET_S)] += 1
        xs = sorted(counts)
        end = per[m]["blocker"]["answered"]
        ax.axvspan(end - s["block_ms"] / 1000, end, color="#bbbbbb", alpha=0.35)
        ax.fill_between([x * BUCKET_S for x in xs], [counts[x] for x in xs], step="post", color=COLORS.get(m),
                        alpha=0.8)
        ax.set_ylim(0, top * 1.6)
        ax.set_yticks([0, top])
        ax.text(1.005, 0.5, f"{m}: {s[m]['answered_during']}", transform=ax.transAxes, fontsize=8.5, va="center")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds since GET /io-in-c was sent; shaded: the 2 s before its answer (the block)")
    axes[len(ms) // 2].set_ylabel(f"GET / answered per {BUCKET_S * 1000:.0f} ms", fontsize=9)
    fig.suptitle(f"Who answers while one request sleeps {s['block_ms']} ms in C (right: answered during the block)",
                 fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.83, top=0.92, bottom=0.12, hspace=0.15)
    c.footer(fig, f"{s['lanes']} clients per server, GET / every {s['interval_ms']} ms on fresh connections; one run")
    return c.save(fig, "blocked.png")


SCENARIO = Scenario(
    name="blocked", row="a call that blocks in C",
    title="A call that blocks in C: who answers while one request sleeps where no patch reaches",
    why="a call blocked in C holds its OS thread: the kernel runs a pool's other threads and a master's other "
        "workers, but a loop and green threads have that one thread — gevent's patches cannot reach into C",
    run=run, section=section, cells=cells, quick_s=5, full_s=5)
