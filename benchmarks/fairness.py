#!/usr/bin/env python3
"""Fairness of a thread pool with fewer threads than keep-alive connections: completions per connection.

    .venv/bin/python benchmarks/fairness.py [--threads 8] [--connections 50] [--duration 5] [--runs 3]
                                            [--server-core 0] [--client-core 1] [--ours-only] [--server PATH]

wrk reports totals only, so a pool that serves a few connections and refuses or starves the rest can look
fast. This client opens CONNECTIONS keep-alive connections (raw sockets on one uvloop event loop), each
sending `GET /` back to back for DURATION seconds, and counts completed responses *per connection*: min,
median and max, the 503s, the connections closed on it, and the starved ones (none completed after the
first). It runs `webmodels serve threadpool --threads N` and `gunicorn -k gthread --threads N -w 1` side by
side (alternating, RUNS times; the server pinned to one core, this client to the other with taskset) and
prints each side's medians and the ratios: throughput ours/gunicorn, and min/median per side.

The server's CPU time per completed request (utime + stime of its process tree, from /proc) is printed too:
on a busy machine it is steadier than requests per second. The client is Python: if both servers report
near the same total, suspect the client (it prints its own CPU use).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from webmodels import launch

BIN = Path(sys.executable).parent
WSGI_APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "13")])
    return [b"Hello, world!"]
'''
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


@dataclass
class Result:
    per_conn: list[int]  # completed 2xx responses per connection
    rejected_503: int
    closed: int  # connections the server closed (or reset) on us before the end
    seconds: float
    server_cpu_s: float
    client_cpu_s: float
    stats: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.per_conn)

    @property
    def starved(self) -> int:
        return sum(1 for n in self.per_conn if n <= 1)

    def line(self) -> str:
        pc = self.per_conn
        med = statistics.median(pc)
        mm = min(pc) / med if med else 0.0
        cpu_us = self.server_cpu_s / self.total * 1e6 if self.total else float("inf")
        return (f"{self.total / self.seconds:8.0f} rps  per connection min {min(pc)} / median {med:.0f} / max "
                f"{max(pc)} (min/median {mm:.2f})  503s {self.rejected_503}  closed {self.closed}  starved "
                f"{self.starved}  server CPU {cpu_us:.0f} µs/request  client CPU {self.client_cpu_s:.1f} s")


async def _one(port: int, idx: int, counts: list[int], flags: dict, stop: float) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        flags["closed"] += 1
        return
    buf = b""
    try:
        while time.monotonic() < stop:
            writer.write(REQUEST)
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buf[:head_end]
                    i = head.lower().find(b"content-length:")
                    length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) \
                        if i >= 0 else 0
                    end = head_end + 4 + length
                    if len(buf) >= end:
                        status = int(head[9:12])
                        buf = buf[end:]
                        break
                chunk = await reader.read(65536)
                if not chunk:
                    flags["closed"] += 1
                    return
                buf += chunk
            if status == 503:
                flags["503"] += 1
            elif 200 <= status < 300:
                counts[idx] += 1
            if b"connection: close" in head.lower():
                flags["closed"] += 1
                return
    except (ConnectionError, OSError):
        flags["closed"] += 1
    finally:
        writer.close()


async def load(port: int, connections: int, duration: float) -> tuple[list[int], dict]:
    counts = [0] * connections
    flags = {"503": 0, "closed": 0}
    stop = time.monotonic() + duration
    await asyncio.gather(*(_one(port, i, counts, flags, stop) for i in range(connections)))
    return counts, flags


def tree_cpu(pid: int) -> float:
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, timeout: float = 15) -> None:
    if not launch.wait_accepting(port, timeout, interval=0.05):
        raise RuntimeError(f"server on port {port} did not start")


def stats_of(port: int) -> dict:
    import json
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_lab/stats", timeout=5) as r:
            c = json.load(r)["counters"]
        return {k: c.get(k) for k in ("admitted", "rejected_503", "held_connections") if k in c}
    except Exception:  # noqa: BLE001 - only ours has it
        return {}


def measure(cmd: list[str], port: int, args: argparse.Namespace) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMODELS_")}
    env["PYTHONPATH"] = args.pythonpath or env.get("PYTHONPATH", "")
    proc = subprocess.Popen(["taskset", "-c", str(args.server_core), *cmd], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_up(port)
        asyncio.run(load(port, min(args.connections, 8), 0.5))  # warm-up: imports, caches
        cpu0, me0, t0 = tree_cpu(proc.pid), time.process_time(), time.monotonic()
        counts, flags = asyncio.run(load(port, args.connections, args.duration))
        seconds = time.monotonic() - t0
        res = Result(counts, flags["503"], flags["closed"], seconds, tree_cpu(proc.pid) - cpu0,
                     time.process_time() - me0)
        res.stats = stats_of(port)
        return res
    finally:
        launch.stop(proc, 10, group=True)  # SIGTERM to the group, then SIGKILL what is left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--ours-only", action="store_true", help="skip gunicorn")
    ap.add_argument("--pythonpath", default="", help="PYTHONPATH for our server (e.g. another checkout's src)")
    ap.add_argument("--flags", default="", help="extra flags for our server")
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {args.client_core})
    except OSError:
        pass
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    appdir = tempfile.mkdtemp(prefix="webmodels-fair-")
    Path(appdir, "wsgi_hello.py").write_text(WSGI_APP)

    def ours(port: int) -> list[str]:
        return [str(BIN / "webmodels"), "serve", "threadpool", "--threads", str(args.threads),
                "--bind", f"127.0.0.1:{port}", *args.flags.split()]

    def gunicorn(port: int) -> list[str]:
        return [str(BIN / "gunicorn"), "--chdir", appdir, "--no-control-socket", "--log-level", "warning",
                "-k", "gthread", "--threads", str(args.threads), "-w", "1", "-b", f"127.0.0.1:{port}",
                "wsgi_hello:app"]

    sides = [("threadpool", ours)] + ([] if args.ours_only else [("gunicorn gthread", gunicorn)])
    print(f"# fairness: {args.connections} keep-alive connections, GET / back to back for {args.duration}s, "
          f"--threads {args.threads}; server on core {args.server_core}, client on core {args.client_core}; "
          f"{args.runs} runs alternating")
    results: dict[str, list[Result]] = {name: [] for name, _ in sides}
    for i in range(args.runs):
        for name, cmd in sides:
            port = free_port()
            r = measure(cmd(port), port, args)
            results[name].append(r)
            print(f"  run {i + 1}: {name:17s} {r.line()} {r.stats or ''}", flush=True)
    summary = {}
    for name, rs in results.items():
        rps = statistics.median(r.total / r.seconds for r in rs)
        mins = statistics.median(min(r.per_conn) for r in rs)
        meds = statistics.median(statistics.median(r.per_conn) for r in rs)
        ratio = statistics.median((min(r.per_conn) / statistics.median(r.per_conn))
                                  if statistics.median(r.per_conn) else 0.0 for r in rs)
        cpu = statistics.median(r.server_cpu_s / r.total * 1e6 if r.total else float("inf") for r in rs)
        n503 = statistics.median(r.rejected_503 for r in rs)
        starved = statistics.median(r.starved for r in rs)
        summary[name] = (rps, cpu)
        print(f"{name:17s} median of runs: {rps:8.0f} rps  min {mins:.0f} / median {meds:.0f} per connection "
              f"(min/median {ratio:.2f})  503s {n503:.0f}  starved {starved:.0f}  server CPU {cpu:.0f} µs/request")
    if len(summary) == 2:
        (a, ca), (b, cb) = summary["threadpool"], summary["gunicorn gthread"]
        print(f"ratio threadpool / gunicorn gthread: throughput {a / b:.2f}×, CPU per request {cb / ca:.2f}× less")
    return 0


if __name__ == "__main__":
    sys.exit(main())
