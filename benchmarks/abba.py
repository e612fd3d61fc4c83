#!/usr/bin/env python3
"""Did a change make a server slower? Server CPU per request of two source trees, A B B A, pinned.

    git worktree add /tmp/before <commit>          # the tree to compare against (its src/ is used)
    .venv/bin/python benchmarks/abba.py --before /tmp/before [--rounds 3] [--duration 4] [--only eventloop,...]

For each configuration, the server of each tree runs alone on core 0 (wrk -t1 on core 1) in the order A B B A,
ROUNDS times; the figure is the server's own CPU time (its whole process tree, from /proc) divided by the
requests wrk completed — steadier than requests per second on a machine shared with other work (neighbours
steal time, not instructions). Both trees run with this interpreter; the "before" tree through PYTHONPATH.
Prints the median µs/request of each side and the change in percent.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hello import cpu_seconds, free_port, wait_up  # noqa: E402

from webmodels import launch  # noqa: E402

CONFIGS = {  # name → (serve arguments, wrk arguments): hello.py's pairs, our side
    "eventloop": (["eventloop"], ["-c", "50"]),
    "prefork-loop": (["prefork", "--engine", "loop", "--workers", "1"], ["-c", "50"]),
    "threadpool": (["threadpool", "--threads", "32"], ["-c", "32"]),
    "prefork": (["prefork", "--workers", "1"], ["-c", "8", "-H", "Connection: close"]),
    "greenthreads": (["greenthreads"], ["-c", "50"]),
}


def one_run(tree: Path | None, serve: list[str], wrk: list[str], duration: int) -> float:
    """µs of server CPU per request for one wrk run against the server of TREE (None: the installed one)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMODELS_")}
    if tree is not None:
        env["PYTHONPATH"] = str(tree / "src")
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "webmodels.cli", "serve", *serve, "--bind",
           f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_up(port)
        url = f"http://127.0.0.1:{port}/"
        subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-d1s", *wrk, url], capture_output=True, timeout=30)
        cpu0 = cpu_seconds(proc.pid)
        out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-d{duration}s", *wrk, url], capture_output=True,
                             text=True, timeout=duration + 30).stdout
        total = re.search(r"(\d+) requests in", out)
        if not total or not int(total.group(1)):
            raise RuntimeError(f"wrk got no answers:\n{out}")
        return (cpu_seconds(proc.pid) - cpu0) * 1e6 / int(total.group(1))
    finally:
        launch.stop(proc, 10, group=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="a checkout of the tree to compare against")
    ap.add_argument("--rounds", type=int, default=3, help="A B B A rounds (each gives two runs per side)")
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--only", default="", help=f"comma-separated from {', '.join(CONFIGS)}")
    args = ap.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset"):
        print("needs wrk and taskset (Debian: apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    before = Path(args.before).resolve()
    only = [c for c in args.only.split(",") if c] or list(CONFIGS)
    print(f"# server CPU µs/request, A = {before}, B = this tree; A B B A × {args.rounds}, {args.duration} s runs")
    for name in only:
        serve, wrk = CONFIGS[name]
        if name == "greenthreads" and not (before / "servers" / "greenthreads.py").exists():
            continue
        a: list[float] = []
        b: list[float] = []
        for _ in range(args.rounds):
            for side in (a, b, b, a):
                side.append(one_run(before if side is a else None, serve, wrk, args.duration))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{name:13s} before {ma:6.1f} µs [{min(a):.1f}–{max(a):.1f}]  after {mb:6.1f} µs "
              f"[{min(b):.1f}–{max(b):.1f}]  change {100 * (mb - ma) / ma:+.1f} %", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
