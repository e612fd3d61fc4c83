"""Slow clients (slowloris): 100 connections trickle a request head one byte a second; can anyone else get in?

Whatever serves a connection from its first byte is pinned by a client that never finishes its head: a
sync worker, a pool thread. The event loop pays a few hundred bytes per such connection. The attack here
is a raw asyncio client in the bench: 100 connections, each sending `GET / HTTP/1.1`, a Host line and
then one byte of a never-ending header per second; a connection the server closes (408, 503) is reopened
100 ms later, as a real attacker would (not at once: a refused client in a tight loop is a connection
flood, another attack). After a one-second head start, once every slow client has connected, a normal client
sends `GET /` on a fresh connection every 100 ms (2 s timeout each) for the rest of the run: its success rate
and p99 are the row.
Defences measured beside the plain run: `--header-timeout 2`, and `--min-rate 100` (bytes/s for heads and
bodies, as Apache's mod_reqtimeout).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import rawclient
from ..kit import Bench, native_only, start_all, stop_all
from ..report import REPORT_MODELS, Charts, Doc, chart_bars, fmt
from . import Cells, Scenario

ATTACKERS = 100
ESTABLISH_MAX_S = 15.0  # the probe waits at most this long after the head start for every slow client to connect
HEAD = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Slow: "
VARIANTS = (("plain", []), ("--header-timeout 2", ["--header-timeout", "2"]), ("--min-rate 100", ["--min-rate", "100"]))


async def _attacker(host: str, port: int, stop: asyncio.Event, stats: dict[str, int]) -> None:
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
            stats["opened"] += 1
            sent = 0
            while not stop.is_set():
                byte = HEAD[sent:sent + 1] or b"a"
                writer.write(byte)
                await writer.drain()
                sent += 1
                try:  # one byte a second; an answer (408) or EOF from the server ends this connection
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except asyncio.TimeoutError:
                    continue
                stats["closed_by_server"] += 1
                if data.startswith(b"HTTP/1.1 408") or data.startswith(b"HTTP/1.0 408"):
                    stats["answered_408"] += 1
                break
        except (OSError, asyncio.TimeoutError):
            stats["errors"] += 1
        finally:
            if writer is not None:
                writer.close()
        # back in 100 ms: a slow client that is refused (503) must not turn into a connection flood
        await asyncio.sleep(0.1)


async def _attack(host: str, port: int, seconds: float, head_start: float) -> dict[str, Any]:
    stop = asyncio.Event()
    stats = {"opened": 0, "closed_by_server": 0, "answered_408": 0, "errors": 0}
    attackers = [asyncio.create_task(_attacker(host, port, stop, stats)) for _ in range(ATTACKERS)]
    # the probe starts once every slow client is connected (a starved machine — a --quick bench opens 1,500 at
    # once — can take longer than the head start: probes sent before the attack is in place measured nothing)
    deadline = time.monotonic() + head_start + ESTABLISH_MAX_S
    await asyncio.sleep(head_start)
    while stats["opened"] < ATTACKERS and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stats["opened_before_probe"] = stats["opened"]
    probe = rawclient.Probe(host, port, interval=0.1, timeout=2.0)
    await probe.run(seconds)
    stop.set()
    await asyncio.wait(attackers, timeout=3)
    for t in attackers:
        t.cancel()
    return {"normal": probe.summary(), "attack": stats}


async def _attack_all(targets: dict[Any, tuple[str, int]], seconds: float, head_start: float) -> dict[Any, Any]:
    labels = list(targets)
    got = await asyncio.gather(*(_attack(*targets[label], seconds, head_start) for label in labels))
    return dict(zip(labels, got))


def run(bench: Bench) -> dict[str, Any]:
    """Per model and defence: the normal client's success rate and p99 while 100 slow heads trickle in.

    A model's variants (plain and each defence) run at once, each on its own server with its own 100 slow
    connections and its own probe: the attack is pure waiting (a byte a second per connection), so the
    servers do not compete for the core, and the scenario takes a third of the time it would in turn.
    With --quick, all models at once as well.
    """
    if (skip := native_only(bench, "server flags (--header-timeout, --min-rate)")):
        return skip
    p = bench.plan
    seconds, head_start = p.pick(2.5, max(p.step, 8.0)), p.pick(0.8, 1.0)
    per: dict[str, dict[str, Any]] = {}
    # --quick: every model at once too (15 servers, 1,500 slow connections: still waiting, not CPU)
    for batch in p.pick([list(p.models)], [[m] for m in p.models]):
        servers: dict[tuple[str, str], Any] = {}
        for m in batch:
            per[m] = {}
            servers.update({(m, label): bench.server(m, flags) for label, flags in VARIANTS})
        bench.progress.step(f"slow clients · {', '.join(batch)} · " + ", ".join(dict.fromkeys(l for _, l in servers)),
                            seconds + head_start + 1.5)
        start_all(servers)
        try:
            targets = {key: rawclient.address(srv.url) for key, srv in servers.items()}
            t0 = time.monotonic()
            got = asyncio.run(_attack_all(targets, seconds, head_start))
            wall = round(time.monotonic() - t0, 2)
        finally:
            stop_all(servers)
        for (m, label) in servers:
            per[m][label] = {**got[(m, label)], "wall_s": wall}
    summary: dict[str, Any] = {"attackers": ATTACKERS, "seconds": seconds, "head_start_s": head_start}
    for m, variants in per.items():
        summary[m] = {label: {"success_pct": v["normal"]["success_pct"], "p99_ms": v["normal"]["p99_ms"],
                              "sent": v["normal"]["sent"], "ok": v["normal"]["ok"]}
                      for label, v in variants.items()}
    return {"raw": {"per_model": per}, "summary": summary}


def _cell(v: dict[str, Any]) -> str:
    return f"{fmt(v['ok'])}/{fmt(v['sent'])} ok ({fmt(v['success_pct'])}%), p99 {fmt(v['p99_ms'])} ms"


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    out = {}
    for m in models:
        if m not in s:
            continue
        v = s[m]
        out[m] = _cell(v["plain"]) + "; " + "; ".join(f"{label}: {fmt(v[label].get('success_pct'))}%"
                                                      for label, _ in VARIANTS[1:] if label in v)
    return out, f"{s['attackers']} connections trickling a head at 1 byte/s; normal GET / every 100 ms"


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    how = ("Each model with its default size; its plain run and each defence at once" +
           (" (with --quick, every model at once too)" if results["settings"].get("quick") else "") +
           ", on separate servers (the attack is waiting, not CPU: nothing competes for the core).")
    d.p(f"{how} {s['attackers']} connections each send a request head one byte a "
        "second and never finish it; one the server closes is reopened 100 ms later. After a "
        f"{fmt(s['head_start_s'])} s head start, a normal client sends `GET /` on a fresh connection every 100 ms "
        f"(2 s timeout) for {fmt(s['seconds'])} s. Defences: `--header-timeout 2` (the server answers 408 to a head "
        "not complete after 2 s) and `--min-rate 100`.")
    rows = []
    for m in REPORT_MODELS:
        for label, v in (sc["raw"]["per_model"].get(m) or {}).items():
            n, a = v["normal"], v["attack"]
            rows.append([m, label, f"{fmt(n['ok'])}/{fmt(n['sent'])}", n["success_pct"], n["p50_ms"], n["p99_ms"],
                         ", ".join(f"{k} {x}" for k, x in n["failures"].items()) or "–", a["opened"],
                         a["answered_408"]])
    d.table(["model", "server flags", "normal ok / sent", "success %", "p50 ms", "p99 ms", "normal failures",
             "slow connections opened", "408s to slow heads"], rows)
    d.note("A sync worker or a pool thread serves a connection from its first byte, so 100 slow heads pin them all: "
           "that is why Apache and gunicorn sync sit behind a buffering proxy (nginx). The loop parks each slow "
           "connection for a few hundred bytes. A header timeout frees the pinned workers every few seconds, but an "
           "attacker that reconnects at once takes them back; a minimum data rate refuses the trickle itself.")
    ms = [m for m in REPORT_MODELS if m in s]
    labels = [label for label, _ in VARIANTS if any(label in s[m] for m in ms)]
    if (img := chart_bars(c, "slow.png", "Normal clients' success rate during a slow-client attack", ms,
                          {label: [s[m].get(label, {}).get("success_pct") for m in ms] for label in labels},
                          "% of normal requests answered", f"{s['attackers']} slow connections; {fmt(s['seconds'])} s "
                          "per model and defence, the defences beside the plain run")):
        d.img(img, "slow clients")


SCENARIO = Scenario(
    name="slow", row="slow clients", title="Slow clients: a trickled head against each model",
    why="a sync worker or pool thread is pinned from a connection's first byte; a loop pays a few hundred bytes",
    run=run, section=section, cells=cells, quick_s=20, full_s=60)
