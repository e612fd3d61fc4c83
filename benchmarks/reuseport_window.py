#!/usr/bin/env python3
"""Established connections lost while prefork workers recycle, retire or go away — shared listener vs --reuseport.

    .venv/bin/python benchmarks/reuseport_window.py [--events recycle,hup,ttou] [--seconds 8] [--runs 3]
    unshare -n sh -c 'ip link set lo up; sysctl -qw net.ipv4.tcp_migrate_req=1; .venv/bin/python benchmarks/reuseport_window.py'

The measurement is the bench's (src/webmodels/bench/scenarios/reuseport.py: Stream, measure); this runs it
several times per event and prints each run. A steady stream of fresh connections: CLIENTS threads each connect, send `GET /` with `Connection: close` as
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
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from webmodels.bench.scenarios.reuseport import CLIENTS, EVENTS, PAUSE_S, measure, migrate_req  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", default=",".join(EVENTS))
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if unknown := set(args.events.split(",")) - set(EVENTS):
        ap.error(f"--events: unknown {', '.join(sorted(unknown))} (known: {', '.join(EVENTS)})")
    print(f"net.ipv4.tcp_migrate_req = {migrate_req()}; {CLIENTS} clients, {PAUSE_S * 1000:.0f} ms apart, "
          f"{args.seconds:g} s per run, {args.runs} runs")
    for event in args.events.split(","):
        for reuseport in (False, True):
            runs = [measure(event, reuseport, args.seconds) for _ in range(args.runs)]
            lost = [r["lost"] for r in runs]
            print(f"{event:8} {'--reuseport' if reuseport else 'shared':12} answered "
                  f"{' / '.join(str(r['answered']) for r in runs)}  lost {' / '.join(map(str, lost))} "
                  f"(median {statistics.median(lost):g})  refused {sum(r['refused'] for r in runs)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
