"""Accept distribution: which worker gets the connections — one shared listener vs SO_REUSEPORT per worker.

With one listening socket inherited by every worker, whichever worker is waiting in accept() (or wakes
first) takes the next connection: under light load the kernel tends to hand them to the most recently
idle worker, so the shares can be very uneven. With `--reuseport` each worker has its own listener and the
kernel hashes connections over them: even on average, but a connection hashed to a busy or hung worker
waits there even if another worker is idle. The figures come from `/_lab/stats` `per_worker`: requests
per worker over one Locust run, before and after.
"""

from __future__ import annotations

from typing import Any

from ..kit import Bench, alone, native_only
from ..report import Charts, Doc, fmt, guard
from . import Cells, Scenario

CONFIGS = (("prefork", ["--workers", "4"]), ("hybrid-loop", []))


def _per_worker(stats: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    return {w["index"]: w for w in (stats or {}).get("per_worker") or []}


def run(bench: Bench) -> dict[str, Any]:
    """Per-worker share of requests under hello load, shared listener vs --reuseport."""
    if (skip := native_only(bench, "--reuseport")):
        return skip
    p = bench.plan
    users = p.pick(16, 32)
    runs: dict[str, Any] = {}
    for model, flags in CONFIGS:
        if model not in p.models:
            continue
        for variant, extra in (("shared", []), ("reuseport", ["--reuseport"])):
            label = f"{model} {variant}"
            r = alone(bench, model, flags + extra, f"accept distribution · {label}", users, p.step, "hello")
            b, a = _per_worker(r.get("before")), _per_worker(r.get("after"))
            if not a:
                raise RuntimeError(f"{model}: /_lab/stats has no per_worker list")
            workers = []
            for idx, w in sorted(a.items()):
                prev = b.get(idx) if b.get(idx, {}).get("pid") == w["pid"] else None
                workers.append({"index": idx, "pid": w["pid"], "engine": w.get("engine"),
                                "requests": w["requests"] - (prev or {}).get("requests", 0),
                                "accepted": w["accepted"] - (prev or {}).get("accepted", 0)})
            total = sum(w["requests"] for w in workers) or 1
            for w in workers:
                w["share"] = round(w["requests"] / total, 3)
            shares = [w["share"] for w in workers]
            runs[label] = {"model": model, "variant": variant, "workers": workers, "users": users,
                           "max_share": max(shares), "min_share": min(shares), "ideal_share": round(1 / len(shares), 3),
                           "run": r}
    summary = {label: {"shares": [w["share"] for w in v["workers"]], "max_share": v["max_share"],
                       "min_share": v["min_share"], "ideal_share": v["ideal_share"]} for label, v in runs.items()}
    return {"raw": {"runs": {k: v["run"] for k, v in runs.items()},
                    "workers": {k: v["workers"] for k, v in runs.items()}, "users": users},
            "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    s = sc["summary"]
    out: dict[str, str] = {}
    for label, v in s.items():
        model, variant = label.rsplit(" ", 1)
        text = f"{variant}: shares {'/'.join(fmt(x * 100, 0) for x in v['shares'])}%"
        out[model] = f"{out[model]}; {text}" if model in out else text
    return out, "requests per worker (%) under hello load"


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    d.p(f"Each configuration alone on the server core, {sc['raw']['users']} Locust users on `GET /` for one load step. "
        "Per worker: requests and accepted connections over the run (from `/_lab/stats` `per_worker`), and the "
        "worker's share of the requests.")
    rows = []
    for label, workers in sc["raw"]["workers"].items():
        for w in workers:
            rows.append([label, w["index"], w["pid"], w["engine"], w["accepted"], w["requests"], w["share"]])
    d.table(["configuration", "worker", "pid", "engine", "accepted", "requests", "share"], rows)
    d.note("Prefork's sync workers close after each response (keep-alive 0), so every request is a new connection "
           "and the shares are per request; a loop worker keeps its connections, so its share is decided once per "
           "Locust user.")
    if (img := chart(c, sc)):
        d.img(img, "accept distribution")


@guard
def chart(c: Charts, sc: dict[str, Any]) -> str | None:
    labels = list(sc["raw"]["workers"])
    fig, ax = c.plt.subplots(figsize=(11, 4))
    for j, label in enumerate(labels):
        bottom = 0.0
        for w in sc["raw"]["workers"][label]:
            ax.bar(j, w["share"] * 100, bottom=bottom, color=c.plt.cm.tab10(w["index"] % 10),
                   edgecolor="white", label=f"worker {w['index']}" if j == 0 else None)
            bottom += w["share"] * 100
    ax.set_xticks(range(len(labels)), labels, fontsize=9)
    ax.set_ylabel("% of requests")
    ax.set_title("Who serves: share of requests per worker, shared listener vs SO_REUSEPORT")
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.17)
    c.footer(fig, "one Locust run per configuration; hello")
    return c.save(fig, "accept.png")


SCENARIO = Scenario(
    name="accept", row="accept distribution", title="Accept distribution: shared listener vs --reuseport",
    why="workers sharing one listener race in accept(); SO_REUSEPORT lets the kernel hash connections over them",
    run=run, section=section, cells=cells, quick_s=12, full_s=30)
