#!/usr/bin/env python3
"""C10k: hold N idle keep-alive connections, measure what they cost in memory and in a probe's latency.

    .venv/bin/python benchmarks/c10k.py [--connections 10000] [--models eventloop,hybrid-loop]
                                        [--probes 2000] [--reference] [--server-core 0] [--client-core 1]
                                        [--runs 3] [--py-spy /tmp/c10k-profile]

For each server: start it (`--keepalive 120`, pinned to one core with taskset; uvicorn with
`--timeout-keep-alive 120` for `--reference`), warm it with the probe's own requests, read the memory of its
whole process tree from /proc (RSS, and PSS and USS from smaps_rollup: RSS counts a page shared by a master
and its workers once per process), then open N connections that each send one `GET /`, read the answer and
stay open, idle. Memory again: growth / N is the cost of one idle connection. Then one more client sends
PROBES sequential `GET /` on one keep-alive connection and we print p50/p99/max of the round trip — with 0
idle connections first, then with N, so the difference is what idling clients cost everyone else.

A model's flags follow its name: green threads serve one connection per greenlet, so hold N with
`--models "greenthreads --greenlets 10500"` (the default 1000 leaves connection 1001 unanswered in the queue).

This process is the client (pinned to another core). The open-file limit is raised from soft to hard for
us and for the servers we start (they inherit it); N is capped to what it allows, and the table says so.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from webmodels import launch

BIN = Path(sys.executable).parent
REQUEST = b"GET / HTTP/1.1\r\nHost: c10k\r\n\r\n"
HELLO = b"Hello, world!"

ASGI_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
'''


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- memory of a process tree, from /proc ---------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private clean + dirty) summed over PID and its descendants, in KiB."""
    total = {"rss": 0, "pss": 0, "uss": 0}
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split()[-1] == "kB"}
        except OSError:
            continue
        total["rss"] += fields.get("Rss", 0)
        total["pss"] += fields.get("Pss", 0)
        total["uss"] += fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return total


def cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / ticks
        except OSError:
            continue
    return total


# -- the clients ------------------------------------------------------------------------------------------------
def read_reply(s: socket.socket) -> None:
    data = b""
    while not data.endswith(HELLO):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the reply ended")
        data += chunk


def open_idle(port: int, n: int) -> list[socket.socket]:
    """N connections, each having done one request, now idle (keep-alive)."""
    socks = []
    for i in range(n):
        for attempt in range(5):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small kernel buffers: we hold many
                s.sendall(REQUEST)
                read_reply(s)
                socks.append(s)
                break
            except OSError:
                if attempt == 4:
                    raise
                time.sleep(0.1)
    return socks


def probe(port: int, n: int) -> list[float]:
    """N sequential GET / on one keep-alive connection; the round trips in ms."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clock = time.perf_counter
        for _ in range(n):
            t0 = clock()
            s.sendall(REQUEST)
            read_reply(s)
            out.append((clock() - t0) * 1000)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# -- one server ------------------------------------------------------------------------------------------------
def command(name: str, port: int, appdir: str, keepalive: int) -> list[str]:
    if name == "uvicorn":
        return [str(BIN / "uvicorn"), "--app-dir", appdir, "--loop", "uvloop", "--http", "httptools",
                "--no-access-log", "--log-level", "warning", "--timeout-keep-alive", str(keepalive),
                "--backlog", "4096", "--host", "127.0.0.1", "--port", str(port), "asgi_hello:app"]
    model, *flags = name.split()
    return [str(BIN / "webmodels"), "serve", model, *flags, "--bind", f"127.0.0.1:{port}",
            "--keepalive", str(keepalive), "--backlog", "4096"]


def wait_up(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(REQUEST)
                read_reply(s)
                return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start: {last!r}")


def measure(name: str, n: int, probes: int, appdir: str, keepalive: int, server_core: int,
            profile: str = "") -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMODELS_")}
    cmd = command(name, port, appdir, keepalive)
    if server_core >= 0:
        cmd = ["taskset", "-c", str(server_core), *cmd]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    socks: list[socket.socket] = []
    try:
        wait_up(port)
        time.sleep(0.5)  # a master forks its workers: let them all come up
        probe(port, probes)  # warm-up: imports, caches, the allocator's first arenas
        base = probe(port, probes)
        mem0 = memory_kib(proc.pid)
        t0 = time.monotonic()
        socks = open_idle(port, n)
        opened_s = time.monotonic() - t0
        time.sleep(1.0)  # let the server settle (and a few deadline ticks pass)
        mem1 = memory_kib(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        spy = None
        if profile:  # sample the server (all its processes) while the probe runs: where did p99 come from?
            out = f"{profile}-{name.split()[0]}.txt"
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--subprocesses", "--rate", "1000",
                                    "--format", "raw", "--output", out, "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"})
            time.sleep(1.5)  # py-spy attaches
        lat = probe(port, probes)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(30)
        cpu_us = (cpu_seconds(proc.pid) - cpu0) * 1e6 / probes
        alive = 0
        for s in socks:  # are they all still held open? (a peek that would block means: yes)
            s.setblocking(False)
            try:
                alive += s.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return {"n": len(socks), "held": alive, "opened_s": opened_s,
                "rss_per": (mem1["rss"] - mem0["rss"]) / len(socks) if socks else 0.0,
                "pss_per": (mem1["pss"] - mem0["pss"]) / len(socks) if socks else 0.0,
                "uss_per": (mem1["uss"] - mem0["uss"]) / len(socks) if socks else 0.0,
                "base_p50": pct(base, 0.5), "base_p99": pct(base, 0.99),
                "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "max": max(lat),
                "mean": statistics.fmean(lat), "cpu_us": cpu_us}
    finally:
        for s in socks:
            s.close()
        launch.stop(proc, 15, group=True)  # SIGTERM to the group, then SIGKILL what is left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--models", default="eventloop,hybrid-loop",
                    help="comma-separated served names, flags allowed: 'threadpool --threads 32'")
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--keepalive", type=int, default=120)
    ap.add_argument("--reference", action="store_true", help="also measure uvicorn (uvloop + httptools)")
    ap.add_argument("--server-core", type=int, default=0, help="-1: do not pin")
    ap.add_argument("--client-core", type=int, default=1, help="-1: do not pin")
    ap.add_argument("--runs", type=int, default=1, help="repeat each server; medians are printed")
    ap.add_argument("--py-spy", default="", metavar="PREFIX",
                    help="record the server with py-spy (pip install py-spy) during the probe into "
                         "PREFIX-<model>.txt (collapsed stacks, nonblocking sampling)")
    args = ap.parse_args()
    limit = raise_nofile()
    n = min(args.connections, limit - 200)  # the client holds N sockets in this one process
    if args.client_core >= 0:
        os.sched_setaffinity(0, {args.client_core})
    appdir = tempfile.mkdtemp(prefix="webmodels-c10k-")
    Path(appdir, "asgi_hello.py").write_text(ASGI_APP)
    names = [m.strip() for m in args.models.split(",") if m.strip()] + (["uvicorn"] if args.reference else [])
    print(f"# {n} idle keep-alive connections (asked {args.connections}; RLIMIT_NOFILE {limit}), "
          f"--keepalive {args.keepalive}; probe: {args.probes} sequential GET / on one connection; server on "
          f"core {args.server_core}, client on core {args.client_core}; {os.cpu_count()} cores")
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for run in range(args.runs):
        for name in names:
            r = measure(name, n, args.probes, appdir, args.keepalive, args.server_core, args.py_spy)
            rows[name].append(r)
            print(f"  run {run + 1} {name}: {r['held']}/{r['n']} held, RSS {r['rss_per']:.2f} KiB/conn, "
                  f"p99 {r['p99']:.3f} ms (idle 0: {r['base_p99']:.3f} ms)", flush=True)
    print()
    print("| server | idle conns held | RSS / conn | PSS / conn | USS / conn | probe p50 | probe p99 | probe max "
          "| p99 with 0 idle | server CPU µs/probe |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"| {name} | {int(med['held'])}/{int(med['n'])} | {med['rss_per']:.2f} KiB | {med['pss_per']:.2f} KiB "
              f"| {med['uss_per']:.2f} KiB | {med['p50']:.3f} ms | {med['p99']:.3f} ms | {med['max']:.2f} ms "
              f"| {med['base_p99']:.3f} ms | {med['cpu_us']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
