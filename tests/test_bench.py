"""`webmodels bench --quick` for real (servers, Locust, wrk as subprocesses), and `webmodels report` from a fixture.

The bench test checks the report's content, not that files exist: every row of the table has figures, prefork's
crash collateral is 0 while the shared-fate models' is not, every Locust run's accounting adds up, and the charts
are PNGs matplotlib can decode.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "bench-results.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROWS = ("memory space / resource usage", "fault isolation", "hung work", "leaks", "communication",
        "creation overhead", "context switching", "multi-core", "concurrency for I/O", "over-threading")


def webmodels(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "webmodels.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def check_pngs(directory: Path, names: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    assert names, "no charts were drawn"
    for name in names:
        data = (directory / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        img = mpimg.imread(directory / name)
        assert img.shape[0] > 200 and img.shape[1] > 400, (name, img.shape)


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The 'table, measured' rows of report.md: {row label: cells}."""
    section = markdown.split("## The table, measured", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| row"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    proc = webmodels("bench", "--quick", "--out", str(out), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "accounting:" in proc.stdout and "balanced in every run" in proc.stdout, proc.stdout
    return out


@pytest.mark.slow
def test_quick_bench_report_has_every_row_with_figures(quick_bench: Path) -> None:
    md = (quick_bench / "report.md").read_text()
    rows = table_rows(md)
    for label in ROWS:
        assert label in rows, f"row {label!r} missing from the table"
        figures = [c for c in rows[label][:-1] if c != "–"]
        assert figures and all(any(ch.isdigit() for ch in c) for c in figures), (label, rows[label])
    assert "Every request accounted" in md and "balanced in every run" in md
    html = (quick_bench / "report.html").read_text()
    for png in sorted(p.name for p in quick_bench.glob("*.png")):
        assert f'src="{png}"' in html and f"]({png})" in md, png


@pytest.mark.slow
def test_quick_bench_figures_are_the_expected_ones(quick_bench: Path) -> None:
    results = json.loads((quick_bench / "results.json").read_text())
    assert results["machine"]["cores_usable"] >= 1 and results["machine"]["python"]
    assert results["machine"]["versions"]["locust"]
    sc = results["scenarios"]
    assert not [n for n, s in sc.items() if s.get("error")], {n: s.get("error") for n, s in sc.items()}
    crash = sc["faults"]["summary"]
    assert crash["crash prefork"]["injected"] >= 1
    assert crash["crash prefork"]["collateral"] == 0  # a crash costs only the request that caused it
    assert crash["segfault prefork"]["collateral"] == 0
    assert crash["crash threadpool"]["collateral"] > 0 and crash["crash eventloop"]["collateral"] > 0  # shared fate
    # every Locust run: ok + expected + collateral = sent = Locust's own count, per server
    runs = 0
    for s in sc.values():
        for run in _runs(s):
            for model, a in run["accounting_rows"].items():
                assert a["ok"] + a["expected"] + a["collateral"] == a["requests"] == a["locust_requests"], (model, a)
                runs += 1
    assert runs >= 20
    comm = sc["communication"]["summary"]
    assert comm["threadpool unsafe"]["lost"] > 0 and comm["threadpool locked"]["lost"] == 0
    assert comm["prefork unsafe"]["lost"] == 0 and comm["prefork unsafe"]["processes"] > 1
    assert sc["hang"]["summary"]["prefork"]["timeout_kills"] >= 1
    mem = sc["memory"]["summary"]
    assert mem["prefork_pss_per_worker_mb"] > 0
    assert any(k.startswith("prefork_rss_over_pss_at_") and v > 1.5 for k, v in mem.items())


def _runs(s: dict) -> list[dict]:
    raw = s.get("raw") or {}
    out = [raw["run"]] if "run" in raw else []
    for v in (raw.get("runs") or {}).values():
        out += v if isinstance(v, list) else [v] if isinstance(v, dict) and "accounting_rows" in v else []
    return out


@pytest.mark.slow
def test_quick_bench_charts_are_valid_pngs(quick_bench: Path) -> None:
    names = sorted(p.name for p in quick_bench.glob("*.png"))
    assert {"memory.png", "faults.png", "hang.png", "leak.png", "io.png", "multicore.png"} <= set(names)
    check_pngs(quick_bench, names)


def test_report_rebuilds_the_same_report_from_results_json(tmp_path: Path) -> None:
    shutil.copy(FIXTURE, tmp_path / "results.json")
    proc = webmodels("report", str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = FIXTURE.parent / "bench-report"
    assert (tmp_path / "report.md").read_text() == (expected / "report.md").read_text()
    assert (tmp_path / "report.html").read_text() == (expected / "report.html").read_text()
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == sorted(re.findall(r"\]\(([\w-]+\.png)\)", (expected / "report.md").read_text()))
    check_pngs(tmp_path, names)
    # and a second rebuild in place is byte-identical (nothing depends on the clock or the host)
    first = {n: (tmp_path / n).read_bytes() for n in ["report.md", "report.html", *names]}
    assert webmodels("report", str(tmp_path), timeout=120).returncode == 0
    assert first == {n: (tmp_path / n).read_bytes() for n in first}


def test_report_without_results_fails_clearly(tmp_path: Path) -> None:
    proc = webmodels("report", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "results.json" in proc.stderr
