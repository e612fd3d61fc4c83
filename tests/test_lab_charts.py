"""The Servers tab's live charts, in headless Chromium, during a short Locust run with crash injection.

Locust runs as a subprocess with its web UI on a free loopback port; the run is started through the UI's
own /swarm form. Chromium (Debian's `chromium`) loads the tab and dumps the DOM after the page's scripts
ran: every chart has one line per server and the fault markers are there. Set WEBMODELS_SCREENSHOT=path.png
to also save a screenshot (that is how docs/servers-tab-charts.png is made). Skipped without Chromium.
"""

from __future__ import annotations

import os
import re

import pytest

from loadtest.charts import METRICS, Charts, p99_between
from webmodels import events

from .support import wait_for
from .support.browser import chromium, run_chromium
from .support.locust import LAB as SERVERS, WebUI  # every lab server: the tab draws a line for each

pytestmark = pytest.mark.slow


# -- the points, without a browser ------------------------------------------------------------------------------------
class FakePanel:
    def __init__(self) -> None:
        self.rows_ = []
        self.acc = {}

    def rows(self):
        return self.rows_

    def accounting(self):
        return self.acc


def test_points_rates_gaps_and_markers():
    panel, charts = FakePanel(), Charts()
    up = {"name": "prefork", "up": True, "pss_bytes": 50 * 2**20, "restarts": 0,
          "counters": {"busy_workers": 2, "workers": 4}}
    panel.rows_ = [up]
    panel.acc = {"prefork": {"ok": 100, "expected": 0, "collateral": 0, "injected": 0}}
    charts.record(panel, now=1000.0)
    panel.acc = {"prefork": {"ok": 300, "expected": 1, "collateral": 1, "injected": 1}}
    panel.rows_ = [{**up, "restarts": 1}]
    charts.record(panel, now=1002.0)
    panel.rows_ = [{"name": "prefork", "up": False, "restarts": "—", "counters": {}}]
    charts.record(panel, now=1003.0)
    doc = charts.document(now=1003.0)
    cols = doc["columns"]
    pts = doc["points"]["prefork"]
    assert pts[1][cols.index("ok")] == 100.0 and pts[1][cols.index("failed")] == 1.0
    assert pts[1][cols.index("pss")] == 50.0 and pts[1][cols.index("busy")] == 2 and pts[1][cols.index("lag")] == 0
    assert pts[2][cols.index("pss")] is None  # down: a gap in the line, not a zero
    assert [m["kind"] for m in doc["markers"]] == ["fault", "restart", "down"]
    assert [m["key"] for m in doc["metrics"]] == [k for k, _, _ in METRICS]


def test_p99_of_the_requests_between_two_snapshots():
    old = ({1: 10, 5: 0}, 10)
    new = ({1: 108, 5: 1, 300: 1}, 120)  # 98 at 1 ms, 1 at 5 ms, 1 at 300 ms since `old`
    assert p99_between(old, new) == 5.0
    assert p99_between(new, new) is None


# -- the page, in Chromium ----------------------------------------------------------------------------------------------
@pytest.fixture
def chrome() -> str:
    path = chromium()
    if path is None:
        pytest.skip("no chromium here (apt-get install chromium)")
    return path


def test_servers_tab_draws_one_line_per_server_and_fault_markers(chrome, start_server, tmp_path):
    log = str(tmp_path / "events.jsonl")  # as under `webmodels up`: every fault logged, at its own time
    servers = {name: start_server(name, env={events.ENV: log}) for name in SERVERS}
    with WebUI(tmp_path, servers, "--accounting-json", str(tmp_path / "accounting.json"), **{events.ENV: log}) as ui:
        c = ui.http
        assert "servers/charts.js" in c.get("/").text
        assert "createElementNS" in c.get("/servers/charts.js").text
        ui.swarm(user_count=6, spawn_rate=6, host="", workload="mixed", fault="crash", fault_every=2)

        def ready() -> bool:
            doc = c.get("/servers/series.json").json()
            kinds = {(m["server"], m["kind"]) for m in doc["markers"]}
            return (all(len(doc["points"].get(n, [])) >= 6 for n in SERVERS)
                    and ("prefork", "fault") in kinds and ("prefork", "restart") in kinds
                    and ("eventloop", "fault") in kinds)

        wait_for(ready, 60, 0.5, "points for every server, fault and restart markers")
        ui.stop_run()  # the charts keep their last five minutes: what the browser draws is what we read
        doc = c.get("/servers/series.json").json()
        url = f"{ui.url}/?tab=servers"
        dom = run_chromium("--virtual-time-budget=8000", "--dump-dom", url)
        if os.environ.get("WEBMODELS_SCREENSHOT"):
            run_chromium("--virtual-time-budget=8000", "--window-size=1480,1250",
                         f"--screenshot={os.environ['WEBMODELS_SCREENSHOT']}", url)
    assert 'id="webmodels-charts"' in dom, dom[-2000:]
    charts = re.findall(r'<svg[^>]*data-metric="(\w+)".*?</svg>', dom, re.S)
    assert charts == [k for k, _, _ in METRICS]
    for svg in re.findall(r'<svg[^>]*data-metric="\w+".*?</svg>', dom, re.S):
        lines = re.findall(r'<path[^>]*data-server="([\w-]+)"', svg)
        assert lines == list(SERVERS), lines  # one line per server, in the tab's order
    # events are marks in the lane under each plot (merged when close: data-server lists every server in a mark)
    assert re.search(r'<g data-kind="fault" data-server="[^"]*\bprefork\b', dom)
    assert re.search(r'<g data-kind="restart" data-server="[^"]*\bprefork\b', dom)
    first = re.search(r'<svg[^>]*data-metric="ok".*?</svg>', dom, re.S).group(0)  # type: ignore[union-attr]
    height = int(re.search(r'<svg[^>]*height="(\d+)"', first).group(1))  # type: ignore[union-attr]
    plot_bottom = max(float(y) for y in re.findall(r'<line x1="46" x2="\d+" y1="([\d.]+)"', first))
    faults = re.findall(r'<g data-kind="fault"[^>]*data-count="(\d+)"><path d="M[\d.]+,([\d.]+)', first)
    assert faults and all(plot_bottom < float(y) < height - 12 for _, y in faults), (plot_bottom, faults)  # never
    # over the data; every server crashed together: one mark with a count, and every fault of the log is there
    assert max(int(n) for n, _ in faults) >= 2, faults
    logged = [m for m in doc["markers"] if m["kind"] == "fault"]  # a short run: all within the axis
    assert sum(int(n) for n, _ in faults) == len(logged), (faults, len(logged))
    # the line of a server that served something is drawn (not the empty placeholder)
    ok = re.search(r'<svg[^>]*data-metric="ok".*?</svg>', dom, re.S).group(0)  # type: ignore[union-attr]
    for name in SERVERS:
        d = re.search(rf'<path d="([^"]*)"[^>]*data-server="{name}"', ok).group(1)  # type: ignore[union-attr]
        assert d.count("L") >= 2, (name, d)
