#!/usr/bin/env python3
"""Hello-route throughput of each model against a reference server, measured side by side with wrk.

    .venv/bin/python benchmarks/hello.py [--runs 5] [--duration 5] [--server-core 0] [--wrk-core 1]

Each pair (ours, reference) is run alternately RUNS times — A, B, A, B… — so drift on a shared machine
hits both; the server is pinned to one core and wrk to the other (taskset). We print the median rps of
each side, the min–max range, and the ratio of medians against the target. Pairs compare like with like:

  eventloop              vs uvicorn (uvloop + httptools), raw ASGI hello     keep-alive, 50 connections
  prefork --engine loop -w 1 vs the same uvicorn (the loop engine as a worker) keep-alive, 50 connections
  threadpool --threads 32 vs gunicorn -k gthread --threads 32 -w 1           keep-alive, 32 connections
  prefork --workers 1    vs gunicorn -k sync -w 1                             Connection: close, 8 connections
  greenthreads           vs gunicorn -k gevent -w 1                           keep-alive, 50 connections

Connections never exceed threads for the thread pool, so no connection is silently starved (wrk does not
report connections that never got an answer). Socket errors and non-2xx answers are printed; a run with
either is marked, not hidden.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from webmodels import launch

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

ASGI_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
'''
WSGI_APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"Hello, world!"]
'''


@dataclass
class Pair:
    name: str
    ours: list[str]
    ref: list[str]
    ref_name: str
    target: float
    wrk: list[str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pairs(appdir: str) -> list[Pair]:
    wb = [str(BIN / "webmodels"), "serve"]
    gun = [str(BIN / "gunicorn"), "--chdir", appdir, "--no-control-socket", "--log-level", "warning"]
    return [
        Pair("eventloop", wb + ["eventloop"],
             [str(BIN / "uvicorn"), "--app-dir", appdir, "--loop", "uvloop", "--http", "httptools",
              "--no-access-log", "--log-level", "warning", "asgi_hello:app"],
             "uvicorn (uvloop+httptools)", 1.6, ["-c", "50"]),
        Pair("prefork-loop", wb + ["prefork", "--engine", "loop", "--workers", "1"],
             [str(BIN / "uvicorn"), "--app-dir", appdir, "--loop", "uvloop", "--http", "httptools",
              "--no-access-log", "--log-level", "warning", "asgi_hello:app"],
             "uvicorn (uvloop+httptools)", 1.6, ["-c", "50"]),
        Pair("threadpool", wb + ["threadpool", "--threads", "32"],
             gun + ["-k", "gthread", "--threads", "32", "-w", "1", "wsgi_hello:app"],
             "gunicorn gthread 32 threads", 1.5, ["-c", "32"]),
        Pair("prefork", wb + ["prefork", "--workers", "1"],
             gun + ["-k", "sync", "-w", "1", "wsgi_hello:app"],
             "gunicorn sync 1 worker", 1.2, ["-c", "8", "-H", "Connection: close"]),
        Pair("greenthreads", wb + ["greenthreads"],
             gun + ["-k", "gevent", "--worker-connections", "1000", "-w", "1", "wsgi_hello:app"],
             "gunicorn gevent 1 worker", 1.5, ["-c", "50"]),
    ]


def bind_args(cmd: list[str], port: int) -> list[str]:
    if "uvicorn" in cmd[0]:
        return cmd + ["--host", "127.0.0.1", "--port", str(port)]
    if "gunicorn" in cmd[0]:
        return cmd + ["-b", f"127.0.0.1:{port}"]
    return cmd + ["--bind", f"127.0.0.1:{port}"]


def wait_up(port: int, timeout: float = 15) -> None:
    if not launch.wait_accepting(port, timeout, interval=0.05):
        raise RuntimeError(f"server on port {port} did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of PID and its descendants (a master's workers), from /proc."""
    ticks, total, todo = os.sysconf("SC_CLK_TCK"), 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / ticks
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return total


def run_wrk(port: int, args: list[str], duration: int, core: int, pid: int = 0) -> tuple[float, str]:
    cmd = ["taskset", "-c", str(core), "wrk", "-t1", f"-d{duration}s", *args, f"http://127.0.0.1:{port}/"]
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    notes = []
    total = re.search(r"(\d+) requests in", out)
    if pid and total and int(total.group(1)):
        # The server's own CPU per request: steadier than rps on a busy machine (neighbours steal time,
        # not instructions).
        notes.append(f"server CPU {(cpu_seconds(pid) - cpu0) * 1e6 / int(total.group(1)):.1f} µs/req")
    if "Socket errors" in out:
        notes.append(re.search(r"Socket errors:.*", out).group(0))  # type: ignore[union-attr]
    if "Non-2xx" in out:
        notes.append(re.search(r"Non-2xx.*", out).group(0))  # type: ignore[union-attr]
    return (float(m.group(1)) if m else 0.0), "; ".join(notes)


def measure(cmd: list[str], pair: Pair, duration: int, server_core: int, wrk_core: int) -> tuple[float, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMODELS_")}
    proc = subprocess.Popen(["taskset", "-c", str(server_core), *bind_args(cmd, port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_up(port)
        run_wrk(port, pair.wrk, 1, wrk_core)  # warm-up: imports, caches, first connections
        return run_wrk(port, pair.wrk, duration, wrk_core, proc.pid)
    finally:
        # stop the server and its children (gunicorn and prefork fork) by the process group we created
        launch.stop(proc, 10, group=True)  # SIGTERM to the group, then SIGKILL what is left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--wrk-core", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated: eventloop,prefork-loop,threadpool,prefork,"
                                               "greenthreads")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    appdir = tempfile.mkdtemp(prefix="webmodels-bench-")
    Path(appdir, "asgi_hello.py").write_text(ASGI_APP)
    Path(appdir, "wsgi_hello.py").write_text(WSGI_APP)
    only = set(filter(None, args.only.split(",")))
    print(f"# hello route, wrk -t1, {args.duration}s × {args.runs} runs alternating; server on core "
          f"{args.server_core}, wrk on core {args.wrk_core}; {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}")
    failed = False
    for pair in pairs(appdir):
        if only and pair.name not in only:
            continue
        ours, ref = [], []
        for i in range(args.runs):
            for cmd, acc, label in ((pair.ours, ours, pair.name), (pair.ref, ref, pair.ref_name)):
                rps, notes = measure(cmd, pair, args.duration, args.server_core, args.wrk_core)
                acc.append(rps)
                print(f"  run {i + 1}: {label:32s} {rps:10.0f} rps {notes}", flush=True)
        mo, mr = statistics.median(ours), statistics.median(ref)
        ratio = mo / mr if mr else float("inf")
        ok = ratio >= pair.target
        failed |= not ok
        print(f"{pair.name:11s} {mo:9.0f} rps [{min(ours):.0f}–{max(ours):.0f}]  vs  {pair.ref_name}: "
              f"{mr:9.0f} rps [{min(ref):.0f}–{max(ref):.0f}]  ratio {ratio:.2f}× (target ≥ {pair.target}×) "
              f"{'OK' if ok else 'BELOW TARGET'}  wrk {' '.join(pair.wrk)}", flush=True)
    shutil.rmtree(appdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
