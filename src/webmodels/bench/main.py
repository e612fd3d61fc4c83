"""`webmodels bench` and `webmodels report`: run the plan, write results.json, build the report."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from ..lab import LAB_PORTS, server_url
from . import SCHEMA
from .kit import MODELS, Bench, Plan
from .report import build
from .runner import Pinning, Progress, dumps, machine_facts
from .scenarios import SCENARIOS


def plan_seconds(plan: Plan, names: list[str]) -> float:
    return sum(SCENARIOS[n].planned(plan.quick, plan.duration) for n in names)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def run_bench(*, models: list[str], scenarios: list[str], duration: float | None, quick: bool, out: Path,
              targets: str, progress: bool | None = None, connections: int | None = None,
              seed: int | None = None) -> int:
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"webmodels bench: error: unknown scenario(s) {', '.join(unknown)}; choose from "
              f"{', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    bad = [m for m in models if m not in MODELS]
    if bad:
        print(f"webmodels bench: error: unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)} (the "
              "lab's servers: Locust has a user class for each)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if seed is None and "soak" in scenarios:
        seed = random.SystemRandom().randrange(1, 2**31)
    plan = Plan(quick=quick, duration=duration, models=tuple(m for m in MODELS if m in models), targets=targets,
                compose_urls={m: server_url(m) for m in MODELS if m in LAB_PORTS}, connections=connections, seed=seed)
    pin = Pinning.detect()
    total = plan_seconds(plan, scenarios)
    bar = Progress(total, enabled=progress).start()
    work = Path(tempfile.mkdtemp(prefix="wm-bench-"))
    t0 = time.time()
    machine = machine_facts()
    load = machine["loadavg_at_start"][0]
    results: dict[str, Any] = {
        "schema": SCHEMA, "started_at": t0, "started_at_iso": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t0)),
        "settings": {"quick": quick, "step_s": plan.step, "models": list(plan.models), "scenarios": scenarios,
                     "targets": targets, "pinning": pin.describe(), "server_cpus": list(pin.server),
                     "locust_cpus": list(pin.locust), "planned_s": round(total), "seed": seed,
                     "connections": connections, "ci": in_ci(),
                     "noise_note": (f"The machine was busy when the run started (load average {load} on "
                                    f"{machine['cores_usable']} cores): absolute figures are noisy; compare models "
                                    "within a run, not across runs.") if load > 0.5 * machine["cores_usable"] else ""},
        "machine": machine,
        "scenario_meta": {n: {"row": SCENARIOS[n].row, "title": SCENARIOS[n].title, "why": SCENARIOS[n].why}
                          for n in scenarios},
        "scenarios": {},
    }
    if seed is not None:
        print(f"bench: chaos seed {seed} (reproduce with --seed {seed})", flush=True)
    bench = Bench(plan, pin, bar, work)
    failed, skipped = [], []
    try:
        for name in scenarios:
            t = time.time()
            try:
                results["scenarios"][name] = SCENARIOS[name].run(bench)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others' figures
                failed.append(name)
                results["scenarios"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                              "traceback": traceback.format_exc(), "raw": {}, "summary": {}}
            if results["scenarios"][name].get("skipped"):
                skipped.append(name)
            results["scenarios"][name]["elapsed_s"] = round(time.time() - t, 1)
            (out / "results.json").write_text(dumps(results))  # a crash later still leaves what was measured
    finally:
        results["elapsed_s"] = round(time.time() - t0, 1)
        (out / "results.json").write_text(dumps(results))
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    written = build(results, out)
    print_summary(results, out, written)
    for name in failed:
        print(f"scenario {name} failed: {results['scenarios'][name]['error']}", file=sys.stderr)
    for name in skipped:
        print(f"scenario {name} skipped: {results['scenarios'][name]['skipped']}"
              + (" — a failure in CI (CI=true): install what it needs or leave it out of --scenarios"
                 if in_ci() else ""), file=sys.stderr)
    return 1 if failed or (skipped and in_ci()) else 0


def print_summary(results: dict[str, Any], out: Path, written: dict[str, Any]) -> None:
    from .report import REPORT_MODELS, accounting_table, headline
    _, totals, balanced = accounting_table(results)
    print(f"bench done in {results['elapsed_s']} s → {out}/report.md, report.html, {len(written['charts'])} charts, "
          "results.json")
    print(f"accounting: {totals['requests']} sent = {totals['ok']} ok + {totals['expected']} expected + "
          f"{totals['collateral']} collateral ({'balanced in every run' if balanced else 'NOT BALANCED'})")
    models = [m for m in REPORT_MODELS if m in results["settings"]["models"]]
    for row in headline(results):  # label, one cell per model, conditions, why
        print(f"  {row[0]}")
        for model, cell in zip(models, row[1:-2]):
            print(f"    {model + ':':<16}{cell}")


def run_report(directory: Path) -> int:
    path = directory / "results.json"
    if not path.exists():
        print(f"webmodels report: error: {path} not found (run `webmodels bench --out {directory}` first)",
              file=sys.stderr)
        return 2
    results = json.loads(path.read_text())
    if results.get("schema") != SCHEMA:
        print(f"webmodels report: error: {path} has schema {results.get('schema')}; this version reads schema "
              f"{SCHEMA} (re-run `webmodels bench` with it)", file=sys.stderr)
        return 2
    written = build(results, directory)
    print(f"report rebuilt: {directory}/report.md, report.html, {len(written['charts'])} charts")
    return 0

