#!/usr/bin/env python3
"""Slow clients as a lesson: N connections trickle a request head while a normal client asks for `/`.

    python benchmarks/slowloris.py                              # prefork --workers 4: defaults, the defences
    python benchmarks/slowloris.py --server hybrid-loop --flags "--header-timeout 2"
    python benchmarks/slowloris.py --url http://127.0.0.1:8002  # a running lab server (exercise 7)
    python benchmarks/slowloris.py --attackers 100 --seconds 12 --rate 1

Each attacker opens a connection and sends one byte of a never-ending head every 1/RATE seconds; when the
server closes it (a 408, a reset), it reconnects 100 ms later — the pressure never lets up. After a second,
the normal client sends `GET /` on a fresh connection every 100 ms and waits up to 2 s for each answer.
Printed per configuration: the normal client's success rate, its p50/p99 latency (successes only), and how
many attacker connections the server cut. Without --url each server runs as a subprocess on 127.0.0.1,
port 0. The attack itself is webmodels.slowclients, which the Exercises tab's buttons run too.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from urllib.parse import urlsplit

from webmodels.listen import LISTEN_RE
from webmodels.slowclients import SlowClients

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
            import threading
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            time.sleep(0.5)  # let the workers boot
            return proc, host, int(port)
    raise SystemExit(f"{server} did not start")


def attack(name: str, host: str, port: int, attackers: int, rate: float, seconds: float) -> str:
    s = SlowClients(host, port, attackers, rate, seconds).start().join().summary()
    pct = 100 * s["ok"] / max(1, s["sent"])
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    return f"| {name} | {s['ok']}/{s['sent']} ({pct:.0f}%) | {fmt(s['p50_ms'])} | {fmt(s['p99_ms'])} | {s['cut']} |"


def run(server: str, flags: str, attackers: int, rate: float, seconds: float) -> str:
    proc, host, port = start(server, flags)
    try:
        return attack(f"{server} {flags}", host, port, attackers, rate, seconds)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", help="one server name instead of the built-in list")
    ap.add_argument("--flags", default="", help="its flags (with --server)")
    ap.add_argument("--url", help="attack this running server (e.g. a lab server: http://127.0.0.1:8002) instead")
    ap.add_argument("--attackers", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1.0, help="bytes per second per attacker")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the normal client runs")
    args = ap.parse_args()
    print(f"{args.attackers} connections trickling a head at {args.rate:g} B/s; a normal client: GET / every "
          f"100 ms for {args.seconds:g} s, fresh connection, 2 s timeout each")
    print("| server and flags | normal client ok | p50 ms | p99 ms | attacker connections cut |")
    print("|---|---|---|---|---|")
    if args.url:
        u = urlsplit(args.url)
        print(attack(args.url, u.hostname or "127.0.0.1", u.port or 80, args.attackers, args.rate, args.seconds),
              flush=True)
        return
    configs = [(args.server, args.flags)] if args.server else CONFIGS
    for server, flags in configs:
        print(run(server, flags, args.attackers, args.rate, args.seconds), flush=True)


if __name__ == "__main__":
    main()
