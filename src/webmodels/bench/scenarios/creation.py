"""Creation overhead: worker vs thread vs task vs greenlet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from ..kit import SERVER_START_S, Bench, med, native_only, rng
from ..report import Charts, Doc, chart_bars, fmt, fmt_range
from ..runner import taskset
from . import Cells, Scenario


CREATION_SNIPPET = r"""
import asyncio, json, os, sys, threading, time
import webmodels.app  # the same imports a server has, so fork copies a realistic process
n = int(sys.argv[1])
def thread_ms():
    ev = threading.Event(); t0 = time.perf_counter()
    t = threading.Thread(target=ev.set); t.start(); ev.wait(); dt = time.perf_counter() - t0; t.join(); return dt * 1e3
def fork_ms():
    r, w = os.pipe(); t0 = time.perf_counter(); pid = os.fork()
    if pid == 0:
        os.write(w, b"x"); os._exit(0)
    os.read(r, 1); dt = time.perf_counter() - t0; os.waitpid(pid, 0); os.close(r); os.close(w); return dt * 1e3
async def tasks(n):
    out = []
    for _ in range(n):
        ev = asyncio.Event(); t0 = time.perf_counter()
        async def go(): ev.set()
        asyncio.get_running_loop().create_task(go()); await ev.wait(); out.append((time.perf_counter() - t0) * 1e3)
    return out
def greenlets(n):  # last: fork() above copied a process without a hub
    import gevent, gevent.event
    out = []
    for _ in range(n):
        ev = gevent.event.Event(); t0 = time.perf_counter()
        gevent.spawn(ev.set); ev.wait(); out.append((time.perf_counter() - t0) * 1e3)
    return out
try:
    import uvloop; run = uvloop.run
except ImportError:
    run = asyncio.run
print(json.dumps({"thread_ms": [thread_ms() for _ in range(n)], "fork_ms": [fork_ms() for _ in range(n // 4 or 1)],
                  "task_ms": run(tasks(n)), "greenlet_ms": greenlets(n)}))
"""



def run(bench: Bench) -> dict[str, Any]:
    """Spawn a prefork worker (SIGTTIN → visible in /_lab/stats) vs start a thread vs schedule a task."""
    if (skip := native_only(bench, "worker spawning (SIGTTIN)")):
        return skip
    p = bench.plan
    reps = p.pick(6, 20)
    bench.progress.step("creation · SIGTTIN → new worker (prefork)", reps * 0.25 + SERVER_START_S)
    spawn_ms, vis_ms = [], []
    srv = bench.server("prefork", ["--workers", "2"])
    t_start = time.perf_counter()
    srv.start()
    server_start_ms = (time.perf_counter() - t_start) * 1000
    try:
        with httpx.Client(timeout=5) as c:
            for _ in range(reps):
                before = {p_["pid"] for p_ in c.get(f"{srv.url}/_lab/stats").json()["processes"]}
                t0 = time.perf_counter()
                srv.signal(signal.SIGTTIN)
                new: set[int] = set()
                while time.perf_counter() - t0 < 5:
                    doc = c.get(f"{srv.url}/_lab/stats").json()
                    new = {p_["pid"] for p_ in doc["processes"]} - before
                    if new:
                        break
                vis_ms.append((time.perf_counter() - t0) * 1000)
                # the new worker's first answer: fresh connections until it serves one (it competes in accept())
                while time.perf_counter() - t0 < 5:
                    if c.get(f"{srv.url}/whoami", headers={"Connection": "close"}).json()["pid"] in new:
                        spawn_ms.append((time.perf_counter() - t0) * 1000)
                        break
                srv.signal(signal.SIGTTOU)
                time.sleep(0.1)
    finally:
        srv.stop()
    n = p.pick(300, 2000)
    bench.progress.step("creation · thread / task / fork in a pinned snippet", 1.5)
    out = subprocess.run(taskset(bench.pin.server, [sys.executable, "-c", CREATION_SNIPPET, str(n)]),
                         capture_output=True, text=True, timeout=60)
    snippet = json.loads(out.stdout)
    summary = {
        "prefork worker: SIGTTIN → visible in /_lab/stats (ms)": {"median": med(vis_ms), "range": rng(vis_ms), "n": len(vis_ms)},
        "prefork worker: SIGTTIN → serves its first request (ms)": {"median": med(spawn_ms), "range": rng(spawn_ms), "n": len(spawn_ms)},
        "os.fork() → child runs (ms)": {"median": med(snippet["fork_ms"]), "range": rng(snippet["fork_ms"]), "n": len(snippet["fork_ms"])},
        "threading.Thread.start() → thread runs (ms)": {"median": med(snippet["thread_ms"]), "range": rng(snippet["thread_ms"]), "n": n},
        "loop.create_task() → task runs (ms)": {"median": med(snippet["task_ms"]), "range": rng(snippet["task_ms"]), "n": n},
        "gevent.spawn() → greenlet runs (ms)": {"median": med(snippet["greenlet_ms"]),
                                                "range": rng(snippet["greenlet_ms"]), "n": n},
        "whole server: exec → listening (ms)": {"median": round(server_start_ms, 1), "range": None, "n": 1},
    }
    # the snippet's thousands of raw timings stay out of results.json: the summary keeps median, range and n
    return {"raw": {"sigttin_visible_ms": [round(x, 2) for x in vis_ms],
                    "sigttin_first_answer_ms": [round(x, 2) for x in spawn_ms],
                    "server_start_ms": round(server_start_ms, 1)},
            "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]

    def g(k: str) -> float | None:
        return s.get(k, {}).get("median")
    return ({"prefork": f"worker: {fmt(g('prefork worker: SIGTTIN → serves its first request (ms)'))} ms to first "
                        f"answer (fork alone {fmt(g('os.fork() → child runs (ms)'), 2)} ms)",
             "threadpool": f"thread start: {fmt((g('threading.Thread.start() → thread runs (ms)') or 0) * 1000)} µs",
             "eventloop": f"task: {fmt((g('loop.create_task() → task runs (ms)') or 0) * 1000)} µs",
             "greenthreads": f"greenlet: {fmt((g('gevent.spawn() → greenlet runs (ms)') or 0) * 1000)} µs"},
            "medians")


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p("What is measured, exactly: prefork: SIGTTIN to the master → the new pid is listed in `/_lab/stats` (polled "
        "back to back, so it includes one stats round-trip), and → the new worker answers its first `/whoami` (fresh "
        "connections; it competes with the other worker in accept(), so this is an upper bound). Thread, task, greenlet and raw "
        "`fork()` are timed in-process by a small Python snippet pinned to the server core (the servers do not expose "
        "them): start → the new thread / task / greenlet / child process runs its first line.")
    d.table(["creation", "median", "range", "n"],
            [[k, v["median"], fmt_range(v["range"], 3), v["n"]] for k, v in s.items()])
    labels = ["worker → first answer", "worker → in stats", "fork()", "thread", "task", "greenlet"]
    keys = ["prefork worker: SIGTTIN → serves its first request (ms)", "prefork worker: SIGTTIN → visible in /_lab/stats (ms)",
            "os.fork() → child runs (ms)", "threading.Thread.start() → thread runs (ms)", "loop.create_task() → task runs (ms)",
            "gevent.spawn() → greenlet runs (ms)"]
    if (img := chart_bars(c, "creation.png", "Creation overhead (median, ms, log scale)", labels,
                          {"median ms": [s.get(k, {}).get("median") for k in keys]}, "ms", "medians; n per row in the table",
                          logy=True)):
        d.img(img, "creation")


SCENARIO = Scenario(
    name="creation", row="creation overhead", title="Creation overhead: worker vs thread vs task vs greenlet",
    why="a process is a copy of an interpreter, a thread an OS stack, a task a Python object, a greenlet a Python "
        "object with a slice of C stack",
    run=run, section=section, cells=cells, quick_s=5, full_s=10)
