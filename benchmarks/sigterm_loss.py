#!/usr/bin/env python3
"""What a SIGTERM loses: clients loop `GET /io?ms=300` on fresh connections; the server is stopped mid-load.

    python benchmarks/sigterm_loss.py                          # prefork --workers 4, every engine, ± reuseport
    python benchmarks/sigterm_loss.py --server threadpool --flags "--threads 4"

Counted: requests whose connection was established before the signal (the client's clock, taken just
before `kill`) and that did not get their 200. Connections refused after the signal are not requests the
server ever had. Issue 11 §1's measure: 16 clients, SIGTERM at ~1.2 s.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

LISTEN_RE = re.compile(r"listening on http://(\S+)")
CONFIGS = [
    ("prefork", "--workers 4"),
    ("prefork", "--workers 4 --reuseport"),
    ("prefork", "--workers 4 --engine threads --threads 2"),
    ("prefork", "--workers 4 --engine loop"),
]


def run(server: str, flags: str, clients: int, at: float) -> str:
    cmd = [sys.executable, "-m", "webmodels.cli", "serve", server, "--bind", "127.0.0.1:0",
           "--graceful-timeout", "10", *shlex.split(flags)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    host = port = None
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if m := LISTEN_RE.search(line):
            host, port = m.group(1).rsplit(":", 1)
            break
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    time.sleep(1.0)  # every worker up (with --reuseport, listening)
    signalled = threading.Event()
    results: list[tuple[float, bool]] = []
    lock = threading.Lock()

    def client() -> None:
        while not signalled.is_set():
            try:
                s = socket.create_connection((host, int(port)), timeout=15)  # type: ignore[arg-type]
            except OSError:
                return
            connected, ok = time.monotonic(), False
            with s:
                try:
                    s.sendall(b"GET /io?ms=300 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    ok = s.recv(100).startswith(b"HTTP/1.1 200")
                except OSError:
                    pass
            with lock:
                results.append((connected, ok))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(at)
    t_signal = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    signalled.set()
    for t in threads:
        t.join(20)
    code = proc.wait(20)
    stop_s = time.monotonic() - t_signal
    before = [ok for connected, ok in results if connected < t_signal]
    log = "".join(lines)
    said = "drained" if "shutdown: drained" in log else ("forced" if "forcing" in log else "?")
    return (f"| {server} {flags} | {before.count(False)} of {len(before)} | {stop_s:.2f} s | exit {code}, "
            f"log says {said} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server")
    ap.add_argument("--flags", default="")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--at", type=float, default=1.2, help="seconds of load before the SIGTERM")
    args = ap.parse_args()
    configs = [(args.server, args.flags)] if args.server else CONFIGS
    print(f"{args.clients} clients looping GET /io?ms=300 (fresh connection each), SIGTERM at {args.at:g} s")
    print("| server and flags | lost among requests connected before the signal | stop took | |")
    print("|---|---|---|---|")
    for server, flags in configs:
        print(run(server, flags, args.clients, args.at), flush=True)


if __name__ == "__main__":
    main()
