"""A real Prometheus (Debian's binary) scrapes the real servers under a short Locust run.

Checks what the metrics profile promises: every PromQL query of the Grafana dashboard returns a series
for every model, and prefork's request counter never goes backwards across a worker kill. Prometheus is
started here on a free loopback port with its store in tmp; Locust runs as a subprocess. In CI a missing
`prometheus` binary is a failure, not a skip (.ci/run installs it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from webmodels import promlab

from .support import free_port, stop_process, wait_for
from .support.locust import LAB as MODELS, locust_cmd, locust_env  # every lab server

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "webmodels.json"
RUN_S = 10
WINDOW = "4s"  # stands for Grafana's $__rate_interval / $__interval: 4 scrapes at 1 s

pytestmark = pytest.mark.slow


def dashboard_queries() -> list[tuple[str, str]]:
    """(title, expr) of every panel target and every Prometheus annotation of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    out += [(f"annotation: {a['name']}", a["expr"]) for a in dash["annotations"]["list"] if "expr" in a]
    return out


def test_compose_configs_are_generated_by_promlab():
    for flag, (name, targets) in promlab.COMPOSE_CONFIGS.items():
        assert (ROOT / "deploy" / "prometheus" / name).read_text() == promlab.config_text(targets, flag=flag), name


def test_up_metrics_without_prometheus_says_how_to_get_it(tmp_path):
    import sys
    env = {**os.environ, "PATH": str(tmp_path), "WEBMODELS_PROMETHEUS": ""}
    res = subprocess.run([sys.executable, "-m", "webmodels.cli", "up", "--metrics", "--no-locust",
                          "--port-offset", "20000"], capture_output=True, text=True, timeout=30, env=env)
    assert res.returncode == 2, res.stderr
    assert "apt-get install prometheus" in res.stderr and "--profile metrics" in res.stderr


@pytest.fixture
def prometheus_bin() -> str:
    binary = promlab.find_binary()
    if binary is None:
        msg = "no `prometheus` binary on PATH (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return binary


class Prometheus:
    def __init__(self, binary: str, targets: dict[str, str], tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(promlab.config_text(targets))
        self.log = open(tmp / "prometheus.log", "w")
        self.proc = subprocess.Popen(promlab.argv(binary, str(config), str(tmp / "data"), f"127.0.0.1:{self.port}"),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=10)
        wait_for(lambda: self.http.get("/-/ready").status_code == 200, 30, 0.1, "Prometheus ready")

    def query_range(self, expr: str, start: float, end: float) -> list[dict]:
        r = self.http.get("/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": "1s"})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def stop(self) -> None:
        self.http.close()
        stop_process(self.proc)
        self.log.close()


def test_dashboard_queries_and_prefork_monotonic_under_load(prometheus_bin, start_server, tmp_path):
    servers = {m: start_server(m) for m in MODELS}
    prom = Prometheus(prometheus_bin, {m: s.address for m, s in servers.items()}, tmp_path)
    try:
        wait_for(lambda: len([r for r in prom.query_range("up == 1", time.time() - 1, time.time())]) == len(MODELS),
                 20, 0.2, "every server scraped")
        start = time.time()
        # Locust: mixed work plus a non-lethal fault every second on each server (500s and fault counts);
        # meanwhile one prefork worker is killed, so the restart figures and the fold are exercised.
        locust = subprocess.Popen(locust_cmd("--headless", "-t", f"{RUN_S}s", "-u", "10", "-r", "10", "--workload",
                                             "mixed", "--fault", "raise", "--fault-every", "1",
                                             "--accounting-json", str(tmp_path / "acc.json")),
                                  cwd=tmp_path, env=locust_env(servers), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(locust.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        time.sleep(RUN_S / 2)
        workers = [p["pid"] for p in servers["prefork"].stats()["processes"] if p["role"] == "worker"]
        with servers["prefork"].client() as c:
            assert c.post("/_lab/kill", params={"target": "worker", "pid": workers[0]}).status_code == 202
        assert locust.wait(RUN_S + 40) in (0, 1), "".join(out)
        reader.join(5)
        time.sleep(3)  # the last scrapes, and windows that cover the end of the run
        end = time.time()

        missing = {}
        for title, expr in dashboard_queries():
            q = expr.replace("$__rate_interval", WINDOW).replace("$__interval", WINDOW)
            series = prom.query_range(q, start, end)
            models = {s["metric"].get("model") for s in series if s["values"]}
            expected = {"prefork"} if title == "annotation: Restarts" else set(MODELS)  # nobody restarts the others
            if not expected <= models:
                missing[title] = sorted(expected - models)
        assert not missing, f"dashboard queries without a series for some model: {missing}"

        # prefork: one counter summed over every worker, dead ones included: never goes backwards
        (series,) = prom.query_range('sum(http_server_request_duration_seconds_count{model="prefork"})', start, end)
        values = [float(v) for _, v in series["values"]]
        assert values == sorted(values) and values[-1] > values[0], values
        restarts = prom.query_range('sum(webmodels_worker_restarts_total{model="prefork"})', end - 1, end)
        assert float(restarts[0]["values"][-1][1]) >= 1

        # what a scrape cost the event loop's thread during the run (the handler's own time, waits excluded)
        (cost,) = prom.query_range('quantile_over_time(0.5, webmodels_metrics_scrape_duration_seconds'
                                   f'{{model="eventloop"}}[{int(end - start)}s])', end - 1, end)
        median_ms = float(cost["values"][-1][1]) * 1000
        print(f"\nevent loop: median /metrics cost during the run {median_ms:.3f} ms")
        # The budget is 1 ms (0.69-0.75 ms measured during Locust runs: README "Metrics"); the loop thread's
        # CPU time still inflates when the whole suite shares 2 cores (1.1 ms seen in a full `make test`), so
        # the bound here is generous, but a scrape that cost several times its budget would fail it.
        assert median_ms < 2.5
    finally:
        prom.stop()


def test_promql_exprs_are_valid_syntax(prometheus_bin, tmp_path):
    """promtool-free check of the annotation/panel expressions' syntax, through the query API on an empty store."""
    prom = Prometheus(prometheus_bin, {"threadpool": f"127.0.0.1:{free_port()}"}, tmp_path)
    try:
        for title, expr in dashboard_queries():
            q = re.sub(r"\$__\w+", WINDOW, expr)
            prom.query_range(q, time.time() - 10, time.time())  # raises on a parse error (status "error")
    finally:
        prom.stop()
