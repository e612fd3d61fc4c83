"""wrk (C, one thread) as a cross-check of Locust's hello ceiling; no row of its own."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from ..kit import Bench, med, rng
from ..report import REPORT_MODELS, Charts, Doc, fmt_range
from ..runner import taskset
from . import Scenario


def run(bench: Bench) -> dict[str, Any]:
    """The hello ceiling measured by wrk (C, one thread, on the generator core) as a cross-check of Locust."""
    path = shutil.which("wrk")
    if not path:
        return {"skipped": "wrk is not installed (apt-get install wrk; brew install wrk): the hello ceiling is "
                           "not cross-checked, Locust's figures stand", "raw": {}, "summary": {}}
    p = bench.plan
    reps = p.pick(1, 3)
    conns = 16  # ≤ the pool's threads: a pool that pins keep-alive connections is not flattered
    dur = max(1, int(p.pick(1, 3)))
    out: dict[str, Any] = {}
    for m in p.models:
        rps: list[float] = []
        with bench.server(m) as srv:
            for i in range(reps):
                bench.progress.step(f"wrk · hello · {m} ({i + 1}/{reps})", dur + 0.3)
                res = subprocess.run(taskset(bench.pin.locust, [path, "-t1", f"-c{conns}", f"-d{dur}s",
                                                                  f"{srv.url}/"]),
                                     capture_output=True, text=True, timeout=dur + 30)
                for line in res.stdout.splitlines():
                    if line.startswith("Requests/sec:"):
                        rps.append(float(line.split()[1]))
                if not rps:  # keep wrk's words only when it did not print a rate
                    out.setdefault("raw_output", {})[f"{m}#{i}"] = res.stdout[-800:] + res.stderr[-400:]
        out[m] = {"rps_median": med(rps), "rps_range": rng(rps), "runs": rps}
    summary = {m: {"rps_median": out[m]["rps_median"], "rps_range": out[m]["rps_range"]} for m in p.models}
    summary["settings"] = f"wrk -t1 -c{conns} -d{dur}s, {reps} run(s), wrk pinned like Locust"
    return {"raw": out, "summary": summary}


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    s = sc["summary"]
    d.p(f"`{s.get('settings')}` against `GET /`, each model alone on the server core, 16 connections (≤ the pool's "
        "threads, so a pool that pins keep-alive connections is not flattered).")
    d.table(["model", "rps median", "range"], [[m, s[m]["rps_median"], fmt_range(s[m]["rps_range"], 0)]
                                               for m in REPORT_MODELS if m in s])


SCENARIO = Scenario(
    name="wrk", row="", title="wrk cross-check of the hello ceiling",
    why="Locust in Python tops out near 10k rps; a C generator shows whether a ceiling is the server's",
    run=run, section=section, cells=None, quick_s=5, full_s=12)
