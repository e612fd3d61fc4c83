from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir


from .support import MODELS, Server

# Property-based tests (test_codec_fuzz.py): `ci` is the default, derandomized so a run is reproducible and
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
    for srv in started:
        srv.stop()


@pytest.fixture(params=MODELS)
def server(request: pytest.FixtureRequest, start_server) -> Server:
    """Each test using this runs once per model."""
    return start_server(request.param)


# -- `make test` runs the suite on several pytest-xdist workers (`-n`, `--dist loadgroup`) ----------------------------
# Most tests wait (timeouts, deadlines, a server's graceful drain), so several run at once even on two cores.
# The quick bench is one module-scoped run shared by its checks: they form one group, so one worker runs it
# once. The long ones are queued first (xdist hands out the largest group first, then collection order), so
# the short tests fill the other workers while they run instead of the suite ending on a lone bench.
LONG_FIRST = ("quick_bench", "test_soak_")


def _rank(item: pytest.Item) -> int:
    if "quick_bench" in getattr(item, "fixturenames", ()):
        return 0
    return 1 if item.name.startswith(LONG_FIRST[1]) else 2


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _rank(item) == 0:
            item.add_marker(pytest.mark.xdist_group("quick_bench"))
    items.sort(key=_rank)  # stable: the rest keep pytest's order (fixtures grouped by parameter)


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
