"""Locust against the three real servers: fault accounting, crash injection, distributed mode, the Servers tab.

Locust runs as a subprocess (it monkey-patches the interpreter with gevent); everything binds 127.0.0.1 and
every run is bounded by --run-time and a subprocess timeout.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .support import Server, wait_for, with_free_port

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
SERVERS = ("threadpool", "prefork", "eventloop")

pytestmark = pytest.mark.slow


def locust_env(servers: dict[str, Server]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "WEBMODELS_"))}
    env.update({f"WEBMODELS_{name.upper()}_URL": srv.url for name, srv in servers.items()})
    return env


def locust_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--skip-log-setup", *args]


def run_headless(tmp_path: Path, servers: dict[str, Server], run_time: int, *args: str) -> tuple[dict, dict, str]:
    """Run Locust headless; return (accounting JSON, Locust's request count per server, output)."""
    acc, stats = tmp_path / "accounting.json", tmp_path / "stats"
    proc = subprocess.run(
        locust_cmd("--headless", "-t", f"{run_time}s", "--accounting-json", str(acc), "--json-file", str(stats),
                   *args),
        cwd=tmp_path, env=locust_env(servers), capture_output=True, text=True, timeout=run_time + 40)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), out  # 1 = some requests failed, which fault runs do on purpose
    assert acc.exists(), out
    counts: dict[str, int] = collections.Counter()
    for entry in json.loads((tmp_path / "stats.json").read_text()):
        counts[entry["name"].split(" ", 1)[0]] += entry["num_requests"]
    return json.loads(acc.read_text()), counts, out


def assert_balanced(acc: dict, counts: dict, names=SERVERS) -> None:
    for name in names:
        row = acc["servers"][name]
        assert row["ok"] + row["expected"] + row["collateral"] == row["requests"], (name, row)
        assert row["requests"] == counts[name] > 0, (name, row["requests"], counts[name])


@pytest.fixture
def three(start_server) -> dict[str, Server]:
    return {name: start_server(name) for name in SERVERS}


def test_every_request_is_accounted(three, tmp_path):
    acc, counts, out = run_headless(tmp_path, three, 4, "-u", "6", "-r", "6", "--workload", "mixed",
                                    "--fault", "raise", "--fault-every", "1", "--timeline", str(tmp_path / "tl"))
    assert "Fault accounting" in out
    assert_balanced(acc, counts)
    records = collections.Counter()
    for f in (tmp_path / "tl").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            records[json.loads(line)["server"]] += 1
    for name in SERVERS:
        row = acc["servers"][name]
        assert row["expected"] >= 2 and row["collateral"] == 0 and row["downtime_ms"] == 0, (name, row)
        assert row["recovery_ms"] is not None and not row["down_at_end"]
        assert records[name] == row["requests"]  # the timeline has one record per request


def test_crash_injection_under_load(three, tmp_path):
    acc, counts, _ = run_headless(tmp_path, three, 6, "-u", "9", "-r", "9", "--workload", "mixed",
                                  "--fault", "crash", "--fault-every", "2")
    assert_balanced(acc, counts)
    stopped = acc["run"]["stopped_at"]
    pre = acc["servers"]["prefork"]
    assert pre["expected"] >= 2 and pre["collateral"] == 0 and not pre["down_at_end"], pre
    assert pre["recovery_ms"] is not None and pre["unrecovered"] == 0, pre
    assert pre["server_view"]["up"] and three["prefork"].alive()
    assert three["prefork"].get("/").status_code == 200  # still serving after the run
    for name in ("threadpool", "eventloop"):  # no supervisor: the first crash is the end
        row = acc["servers"][name]
        assert row["collateral"] > 0 and row["down_at_end"], (name, row)
        assert row["downtime_ms"] > 2000 and stopped - row["downtime_to"] < 1.0, (name, row)
        assert row["recovery_ms"] is None and row["unrecovered"] >= 1, (name, row)
        assert not row["server_view"]["up"]
        assert three[name].wait_exit(5) is not None


def test_processes_2_report_to_the_master(three, tmp_path):
    # not Locust's default 5557: other runs may hold it; loopback only; another port if it was taken meanwhile
    acc, counts, _ = with_free_port(lambda port: run_headless(
        tmp_path, three, 4, "--processes", "2", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "--master-port", str(port), "-u", "6", "-r", "6", "--fault", "raise", "--fault-every", "1",
        "--timeline", str(tmp_path / "tl")))
    assert acc["run"]["role"] == "master" and acc["run"]["workers"] == 2
    assert_balanced(acc, counts)
    assert len(list((tmp_path / "tl").glob("worker*.jsonl"))) == 2  # one timeline per worker process
    for name in SERVERS:
        assert acc["servers"][name]["expected"] >= 2


def test_web_ui_servers_tab(three, tmp_path):
    def launch(port: int) -> tuple[subprocess.Popen, int]:
        out = tmp_path / f"locust-{port}.log"
        proc = subprocess.Popen(
            locust_cmd("--web-host", "127.0.0.1", "--web-port", str(port), "--accounting-json",
                       str(tmp_path / "accounting.json")),
            cwd=tmp_path, env=locust_env(three), stdout=out.open("w"), stderr=subprocess.STDOUT)
        wait_for(lambda: proc.poll() is not None or httpx.get(f"http://127.0.0.1:{port}/", timeout=2).is_success,
                 20, 0.1, "the Locust web UI")
        if proc.poll() is not None:  # e.g. the port was taken between free_port() and Locust's bind
            raise RuntimeError(f"locust exited: {out.read_text()[-2000:]}")
        return proc, port

    proc, port = with_free_port(launch)
    ui = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=ui, timeout=5) as c:
            page = c.get("/?tab=servers").text
            assert '"extended_tabs": [{"key": "servers", "title": "Servers"}]' in page
            # requests served, from the servers themselves (each look adds one /_lab/stats request)
            served = lambda: {n: srv.stats()["counters"]["requests"] for n, srv in three.items()}  # noqa: E731

            def run(host: str, until, what: str) -> None:
                r = c.post("/swarm", data={"user_count": 3, "spawn_rate": 3, "host": host, "workload": "hello"})
                assert r.json()["success"], r.text
                wait_for(until, 10, 0.2, what)
                c.post("/stop")
                wait_for(lambda: c.get("/stats/requests").json()["state"] == "stopped", 10, 0.2, "stop")

            # a typed Host applies to every class for that run ...
            before = served()
            run(three["prefork"].url, lambda: three["prefork"].stats()["counters"]["requests"] > before["prefork"] + 200,
                "load on prefork")
            after = served()
            assert after["threadpool"] - before["threadpool"] <= 3 and after["eventloop"] - before["eventloop"] <= 3

            # ... and clearing it gives every class its own host back (plain Locust would keep the override)
            def live() -> bool:
                rows = c.get("/servers.json").json()["servers"]
                now = served()
                return (len(rows) == 3 and all(x["up"] and x["pss_bytes"] for x in rows)
                        and all(now[n] > after[n] + 200 for n in SERVERS))

            c.post("/swarm", data={"user_count": 3, "spawn_rate": 3, "host": "", "workload": "hello"})
            wait_for(live, 10, 0.2, "every server gets load again and shows up in /servers.json")
            rows = c.get("/servers.json").json()["servers"]
            assert [r["name"] for r in rows] == list(SERVERS)
            for row in rows:  # live pids and PSS
                assert row["pid"] == three[row["name"]].pid and row["pss"] > 0
                for pid in row["pid_list"]:
                    os.kill(pid, 0)
            assert len(rows[1]["pid_list"]) == 5  # prefork: master + 4 workers
            ext = wait_for(lambda: c.get("/stats/requests").json().get("extended_stats"), 5, 0.2, "extended_stats")
            assert ext[0]["key"] == "servers" and [r["server"] for r in ext[0]["data"]] == list(SERVERS)
            assert c.get("/servers.csv").text.startswith("Server,State,PIDs")
            c.post("/stop")
            wait_for(lambda: c.get("/stats/requests").json()["state"] == "stopped", 10, 0.2, "stop")
            acc = c.get("/accounting.json").json()
            assert set(acc["servers"]) == set(SERVERS)
            assert all(s["ok"] + s["expected"] + s["collateral"] == s["requests"] for s in acc["servers"].values())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
