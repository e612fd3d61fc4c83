"""The scenarios: one module per row of the processes-vs-threads table, registered once here.

A scenario module owns everything about its row: what to run (`run`, returning `raw` + `summary`), the
cells of the headline table (`cells`), its report section and chart (`section`), and a one-line **why**
(the mechanism the row shows). The report, the CLI and the progress estimate all read this registry;
nothing else lists the scenarios. The order of `_MODULES` is the order of the report.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

Cells = tuple[dict[str, str], str]  # (model → cell text, conditions)


@dataclass(frozen=True)
class Scenario:
    name: str
    row: str  # label of the headline table's row ("" = no row)
    title: str  # heading of its report section
    why: str  # one line: the mechanism the row shows
    run: Callable[[Any], dict[str, Any]]  # Bench → {"raw", "summary"} (or {"skipped": reason, ...})
    section: Callable[..., None]  # (Doc, Charts, scenario result, results) → None
    cells: Callable[[dict[str, Any], dict[str, Any], list[str]], Cells] | None = None  # (sc, results, models)
    quick_s: float = 10.0  # planned seconds, quick plan
    full_s: float = 30.0  # planned seconds, default plan at 6 s per step
    default: bool = True  # in `webmodels bench` without --scenarios
    whole_duration: bool = False  # --duration is this scenario's whole length, not the length of a load step

    def planned(self, quick: bool, duration: float | None) -> float:
        """Seconds this scenario is expected to take (the progress bar's estimate)."""
        if self.whole_duration and duration:
            return duration + 5
        return self.quick_s if quick else self.full_s * max((duration or 6.0) / 6.0, 0.5)


_MODULES = ("memory", "faults", "hang", "leak", "communication", "creation", "context", "wrk", "multicore",
            "io_concurrency", "blocked", "overthreading", "idle", "slow", "accept", "reuseport", "soak")
SCENARIOS: dict[str, Scenario] = {}
for _mod in _MODULES:
    _s: Scenario = importlib.import_module(f"{__name__}.{_mod}").SCENARIO
    SCENARIOS[_s.name] = _s

DEFAULT = tuple(n for n, s in SCENARIOS.items() if s.default)
