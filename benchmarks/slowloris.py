#!/usr/bin/env python3
"""Slow clients as a lesson: N connections trickle a request head while a normal client asks for `/`.

    python benchmarks/slowloris.py                              # prefork --workers 4: defaults, the defences
    python benchmarks/slowloris.py --server hybrid-loop --flags "--header-timeout 2"
    python benchmarks/slowloris.py --attackers 100 --seconds 12 --rate 1

Each attacker opens a connection and sends one byte of a never-ending head every 1/RATE seconds; when the
server closes it (a 408, a reset), it reconnects at once — the pressure never lets up. Meanwhile the normal
client sends `GET /` on a fresh connection every 100 ms and waits up to 2 s for each answer. Printed per
configuration: the normal client's success rate, its p50/p99 latency (successes only), and how many
attacker connections the server cut. The server runs as a subprocess on 127.0.0.1, port 0.
"""

from __future__ import annotations

import argparse
import re
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time

LISTEN_RE = re.compile(r"listening on http://(\S+)")
CONFIGS = [  # (server, extra flags)
    ("prefork", "--workers 4"),
    ("prefork", "--workers 4 --header-timeout 2"),
    ("prefork", "--workers 4 --min-rate 100"),
    ("prefork", "--workers 4 --header-timeout 2 --min-rate 100"),
    ("hybrid-threads", ""),
    ("hybrid-threads", "--header-timeout 2"),
    ("hybrid-loop", ""),
]


def start(server: str, flags: str) -> tuple[subprocess.Popen, str, int]:
    cmd = [sys.executable, "-m", "webmodels.cli", "serve", server, "--bind", "127.0.0.1:0", *shlex.split(flags)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := LISTEN_RE.search(line):
            host, port = m.group(1).rsplit(":", 1)
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            time.sleep(0.5)  # let the workers boot
            return proc, host, int(port)
    raise SystemExit(f"{server} did not start")


def attacker(host: str, port: int, rate: float, stop: threading.Event, cut: list[int]) -> None:
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100_000
    while not stop.is_set():
        try:
            s = socket.create_connection((host, port), timeout=5)
        except OSError:
            time.sleep(0.1)
            continue
        with s:
            for i in range(len(head)):
                if stop.wait(1 / rate):
                    return
                try:
                    s.sendall(head[i:i + 1])
                except OSError:
                    cut[0] += 1
                    break


def normal(host: str, port: int, seconds: float) -> tuple[int, int, list[float]]:
    ok = sent = 0
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        sent += 1
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(max(0.01, 2 - (time.monotonic() - t0)))
                s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    ok += 1
                    times.append(time.monotonic() - t0)
        except OSError:
            pass
        time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
    return ok, sent, times


def run(server: str, flags: str, attackers: int, rate: float, seconds: float) -> str:
    proc, host, port = start(server, flags)
    stop, cut = threading.Event(), [0]
    threads = [threading.Thread(target=attacker, args=(host, port, rate, stop, cut), daemon=True)
               for _ in range(attackers)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)  # the attack is established
        ok, sent, times = normal(host, port, seconds)
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    times.sort()
    p50 = f"{statistics.median(times) * 1000:.1f}" if times else "-"
    p99 = f"{times[min(len(times) - 1, int(len(times) * 0.99))] * 1000:.1f}" if times else "-"
    return (f"| {server} {flags} | {ok}/{sent} ({100 * ok / max(1, sent):.0f}%) | {p50} | {p99} "
            f"| {cut[0]} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", help="one server name instead of the built-in list")
    ap.add_argument("--flags", default="", help="its flags (with --server)")
    ap.add_argument("--attackers", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1.0, help="bytes per second per attacker")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the normal client runs")
    args = ap.parse_args()
    configs = [(args.server, args.flags)] if args.server else CONFIGS
    print(f"{args.attackers} connections trickling a head at {args.rate:g} B/s; a normal client: GET / every "
          f"100 ms for {args.seconds:g} s, fresh connection, 2 s timeout each")
    print("| server and flags | normal client ok | p50 ms | p99 ms | attacker connections cut |")
    print("|---|---|---|---|---|")
    for server, flags in configs:
        print(run(server, flags, args.attackers, args.rate, args.seconds), flush=True)


if __name__ == "__main__":
    main()
