#!/usr/bin/env python3
"""Instructions per hello request on the handler's path, alone and in a prefork worker: a figure load cannot bend.

    .venv/bin/python benchmarks/instructions.py [--requests 20000]      # needs valgrind (apt-get install valgrind)

Runs `app.dispatch_fast` on a parsed `GET /` REQUESTS times under `valgrind --tool=callgrind`, in a plain
Runtime (the event loop's) and in a forked worker's BoardRuntime (prefork's), and subtracts the same
script run with no requests: what is left is the instructions one request costs on that path — counting
in the runtime or the board slot, the /metrics tally, routing, the handler. Wall and CPU time on a shared
2-core machine swing by a third between runs; instruction counts do not, so they say where a difference
between two versions went. Run it with another checkout's interpreter to compare (its venv imports its code).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

WORKLOAD = r'''
import os, sys
n, where = int(sys.argv[1]), sys.argv[2]
from webmodels import app
from webmodels.codec import RequestParser
from webmodels.config import build_config
from webmodels.runtime import Runtime
(req,) = RequestParser().feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
if where == "alone":
    rt = Runtime(build_config("eventloop", {}, {}))
else:  # as prefork does it: the board and the runtime made before the fork, the worker attached after it
    from webmodels.servers.board import BoardRuntime, new_board
    board = new_board()
    board.master_pid = os.getpid()
    rt = BoardRuntime(build_config("prefork", {"engine": "loop"}, {}), board)
    if os.fork():
        os.wait()
        os._exit(0)
    rt.attach(board.slots[0], 0)
app.dispatch_fast(req, rt)  # the first request creates what is created on first use
for _ in range(n):
    app.dispatch_fast(req, rt)
os._exit(0)
'''


def instructions(n: int, where: str) -> int:
    """Instructions of the process that served (the forked worker's when WHERE is "worker")."""
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                          "-c", WORKLOAD, str(n), where], capture_output=True, text=True, timeout=600).stderr
    counts = re.findall(r"==(\d+)== Collected : (\d+)", out)
    if not counts:
        raise RuntimeError(f"no callgrind summary:\n{out[-2000:]}")
    return int(counts[0][1])  # the first to exit: the worker (its master waits for it), or the only one


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    per = {}
    for where in ("alone", "worker"):
        per[where] = (instructions(args.requests, where) - instructions(0, where)) / args.requests
        print(f"{where:7s} {per[where]:8.0f} instructions per hello request (app.dispatch_fast)", flush=True)
    print(f"worker over alone: {per['worker'] / per['alone'] - 1:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
