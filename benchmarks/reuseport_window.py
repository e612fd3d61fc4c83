#!/usr/bin/env python3
"""Established connections lost while prefork workers recycle, retire or go away — shared listener vs --reuseport.

    .venv/bin/python benchmarks/reuseport_window.py [--events recycle,hup,ttou] [--seconds 8] [--runs 3]
    unshare -n sh -c 'ip link set lo up; sysctl -qw net.ipv4.tcp_migrate_req=1; .venv/bin/python benchmarks/reuseport_window.py'

A steady stream of fresh connections: CLIENTS threads each connect, send `GET /` with `Connection: close` as
soon as connected, read the answer, and pause PAUSE_S before the next connection (3 × 20 ms ≈ 140 connections/s
on loopback). A connection whose connect() succeeded and that got no answer is *lost* (established, then reset
or closed unanswered); a refused connect sent nothing and is not counted. Against `prefork --workers 2`:
  recycle  --max-requests 5 (a worker recycles every few requests)
  hup      SIGHUP to the master every 0.5 s (every worker replaced)
  ttou     SIGTTIN then SIGTTOU every 0.5 s (a worker added, then one removed: its listener closes)
net.ipv4.tcp_migrate_req is read from this network namespace and printed: 1 makes the kernel hand a closing
SO_REUSEPORT listener's queue to a sibling (Linux ≥ 5.14); it can be set only by root, per namespace (the second
command above runs the measurement in a namespace of its own, leaving the host's setting alone).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from webmodels import launch  # noqa: E402

CLIENTS = 3
PAUSE_S = 0.02
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
EVENTS = {"recycle": ("--max-requests", "5"), "hup": (), "ttou": ()}


def migrate_req() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text())
    except (OSError, ValueError):
        return -1


@dataclass
class Stream:
    """CLIENTS threads opening fresh connections, one request each, PAUSE_S apart."""

    host: str
    port: int
    answered: int = 0
    lost: int = 0
    refused: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Stream:
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for t in self._threads:
            t.start()
        return self

    def _client(self) -> None:
        while not self._stop.is_set():
            try:
                s = socket.create_connection((self.host, self.port), timeout=10)
            except OSError:
                with self._lock:
                    self.refused += 1
                time.sleep(PAUSE_S)
                continue
            ok = False
            with s:
                try:
                    s.sendall(REQUEST)
                    ok = s.recv(64).startswith(b"HTTP/1.1 200")
                except OSError:
                    pass
            with self._lock:
                if ok:
                    self.answered += 1
                else:
                    self.lost += 1
            time.sleep(PAUSE_S)

    def stop(self) -> Stream:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return self


def measure(event: str, reuseport: bool, seconds: float) -> Stream:
    """Run one server through EVENT for SECONDS under the stream; return the stream's counts."""
    flags = ["--workers", "2", *EVENTS[event]] + (["--reuseport"] if reuseport else [])
    proc = launch.Process(launch.serve_argv("prefork", *flags), env=launch.clean_env())
    try:
        if not proc.wait_listening(20):
            raise SystemExit(f"the server did not start:\n{proc.log}")
        stream = Stream(proc.host, proc.port).start()
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            time.sleep(0.5)
            if event == "hup":
                os.kill(proc.pid, signal.SIGHUP)
            elif event == "ttou":
                os.kill(proc.pid, signal.SIGTTIN)
                time.sleep(0.25)
                os.kill(proc.pid, signal.SIGTTOU)
        return stream.stop()
    finally:
        proc.stop(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", default="recycle,hup,ttou")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"net.ipv4.tcp_migrate_req = {migrate_req()}; {CLIENTS} clients, {PAUSE_S * 1000:.0f} ms apart, "
          f"{args.seconds:g} s per run, {args.runs} runs")
    for event in args.events.split(","):
        for reuseport in (False, True):
            runs = [measure(event, reuseport, args.seconds) for _ in range(args.runs)]
            lost = [r.lost for r in runs]
            print(f"{event:8} {'--reuseport' if reuseport else 'shared':12} answered "
                  f"{' / '.join(str(r.answered) for r in runs)}  lost {' / '.join(map(str, lost))} "
                  f"(median {statistics.median(lost):g})  refused {sum(r.refused for r in runs)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
