"""Fixtures and the xdist grouping for the whole suite. Which file holds which claim: tests/README.md."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from webmodels import launch

from .support import Server

# Property-based tests (test_unit_codec_fuzz.py): `ci` is the default, derandomized so a run is reproducible and
# bounded (a few seconds); `make fuzz` selects `fuzz` (HYPOTHESIS_PROFILE=fuzz) for a long random search.
# No example database: nothing is written into the tree.
settings.register_profile("ci", max_examples=400, derandomize=True, deadline=None, database=None,
                          print_blob=True)
settings.register_profile("fuzz", max_examples=int(os.environ.get("WEBMODELS_FUZZ_EXAMPLES", "20000")),
                          deadline=None, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):  # its caches go to /tmp, not into the tree
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "webmodels-hypothesis")


@pytest.fixture
def start_server() -> Iterator:
    """Factory: start_server(model, *flags) → a running Server, stopped after the test."""
    started: list[Server] = []

    def start(model: str, *args: str, **kw: object) -> Server:
        srv = Server(model, *args, **kw)  # type: ignore[arg-type]
        started.append(srv)
        return srv

    yield start
    # Together, one deadline for all (a server a test left hung would make a graceful stop wait its whole
    # --graceful-timeout); then SIGKILL to each group: nothing a test started outlives it.
    launch.stop_all([srv.proc for srv in started], timeout=3.0, sweep=True)


# -- `make test` runs the suite on several pytest-xdist workers (`-n`, `--dist loadgroup`) ----------------------------
# Most tests wait (timeouts, deadlines, a server's graceful drain), so several run at once even on two cores.
# The quick bench is one module-scoped run shared by its checks: they must form one group, so that one worker
# runs it once. The group is decided here, by name, in the controller: xdist's own `xdist_group` mark works by
# rewriting node ids, which pytest 9.2 no longer lets it do (pytest-xdist issue #1386: the mark is silently
# ignored and every worker would run its own bench). The long ones are queued first (xdist hands out the
# largest group first, then collection order), so the short tests fill the other workers meanwhile.
QUICK_BENCH = "test_quick_bench_"  # every test using the quick_bench fixture is named so (checked below)
SOAK = "test_soak_"
# Modules whose tests share a lab (a module-scoped `webmodels up`): one worker runs them all, one lab at a time
# (two labs under load at once on two cores would starve the tests beside them).
SHARED_LAB = ("tests/test_exercises_lab.py", "tests/test_exercises_tab.py")


def _rank(item: pytest.Item) -> int:
    if item.name.startswith(QUICK_BENCH):
        return 0
    return 1 if item.name.startswith(SOAK) or item.nodeid.split("::")[0] in SHARED_LAB else 2


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misnamed = [i.nodeid for i in items
                if "quick_bench" in getattr(i, "fixturenames", ()) and not i.name.startswith(QUICK_BENCH)]
    if misnamed:  # it would run a bench of its own on another worker
        raise pytest.UsageError(f"tests using the quick_bench fixture must be named {QUICK_BENCH}*: {misnamed}")
    items.sort(key=_rank)  # stable: the rest keep pytest's order (fixtures grouped by parameter)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class QuickBenchTogether(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.split("::")[0] in SHARED_LAB:
                return "shared_lab"
            return "quick_bench" if f"::{QUICK_BENCH}" in nodeid else super()._split_scope(nodeid)

    return QuickBenchTogether(config, log)


# -- in CI a skipped test is a failure: a CI that lacks a tool must say so, not pass without the check ----------
def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip(report: pytest.BaseReport) -> None:
    if _ci() and report.skipped and not hasattr(report, "wasxfail"):  # an xfail is reported as skipped too
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), which counts as a failure: {_skip_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator:
    outcome = yield
    _fail_skip(outcome.get_result())
