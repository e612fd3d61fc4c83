"""Locust as a subprocess (it monkey-patches the interpreter with gevent: never imported here), bounded in time.

Every lab server's URL is always set (a server a test does not start points at a closed port), so no run ever
reaches the lab's own ports 8001-8006.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from webmodels import lab

from .processes import free_port, stop_process, wait_for, with_free_port
from .servers import Server

ROOT = Path(__file__).resolve().parent.parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
LAB = tuple(lab.SERVERS)  # the lab's servers, in the table's order
CLASSES = {name: s.user_class for name, s in lab.SERVERS.items()}


def locust_env(servers: dict[str, Server], **extra: str) -> dict[str, str]:
    """Our environment without Locust's or the lab's settings; every lab URL set (SERVERS' to them), plus EXTRA."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "WEBMODELS_"))}
    env.update({s.url_env: f"http://127.0.0.1:{free_port()}" for s in lab.SERVERS.values()})  # nothing listens
    env.update({lab.SERVERS[name].url_env: srv.url for name, srv in servers.items()})
    env.update(extra)
    return env


def locust_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--skip-log-setup", *args]


def locust_counts(stats_json: Path) -> collections.Counter:
    """Locust's own count of requests per server, and in total ("requests", "failures"), from --json-file."""
    counts: collections.Counter = collections.Counter()
    for entry in json.loads(stats_json.read_text()):
        counts[entry["name"].split(" ", 1)[0]] += entry["num_requests"]
        counts["requests"] += entry["num_requests"]
        counts["failures"] += entry["num_failures"]
    return counts


def run_headless(tmp_path: Path, servers: dict[str, Server], run_time: int, *args: str,
                 env: dict[str, str] | None = None) -> tuple[dict, collections.Counter, str]:
    """Run Locust headless (ENV: extra variables); return (accounting JSON, Locust's own counts, output)."""
    acc, stats = tmp_path / "accounting.json", tmp_path / "stats"
    proc = subprocess.run(
        locust_cmd("--headless", "-t", f"{run_time}s", "--accounting-json", str(acc), "--json-file", str(stats),
                   *args),
        cwd=tmp_path, env=locust_env(servers, **(env or {})), capture_output=True, text=True, timeout=run_time + 40)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), out  # 1 = some requests failed, which fault runs do on purpose
    assert acc.exists(), out
    return json.loads(acc.read_text()), locust_counts(tmp_path / "stats.json"), out


def assert_balanced(acc: dict, counts: dict, names: tuple[str, ...]) -> None:
    """Every request of each of NAMES is ok, expected or collateral, and the accounting has Locust's own count."""
    for name in names:
        row = acc["servers"][name]
        assert row["ok"] + row["expected"] + row["collateral"] == row["requests"], (name, row)
        assert row["requests"] == counts[name] > 0, (name, row["requests"], counts[name])


class WebUI:
    """Locust's web UI on a free loopback port, a subprocess in CWD (its output in CWD/locust-<port>.log)."""

    def __init__(self, cwd: Path, servers: dict[str, Server], *args: str, **env: str) -> None:
        def launch(port: int) -> tuple[subprocess.Popen, int]:
            out = cwd / f"locust-{port}.log"
            proc = subprocess.Popen(locust_cmd("--web-host", "127.0.0.1", "--web-port", str(port), *args), cwd=cwd,
                                    env=locust_env(servers, **env), stdout=out.open("w"), stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: proc.poll() is not None or httpx.get(f"http://127.0.0.1:{port}/", timeout=2).is_success,
                         30, 0.1, "the Locust web UI")
            except AssertionError:
                stop_process(proc)
                raise
            if proc.poll() is not None:  # e.g. the port was taken between free_port() and Locust's bind
                raise RuntimeError(f"locust exited: {out.read_text()[-2000:]}")
            return proc, port

        self.proc, port = with_free_port(launch)
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def __enter__(self) -> "WebUI":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rows(self) -> dict[str, dict]:
        """The Servers tab's rows, by server."""
        return {r["server"]: r for r in self.http.get("/servers.json").json()["servers"]}

    def swarm(self, **form: object) -> None:
        """What the Start button sends (Locust's POST /swarm)."""
        r = self.http.post("/swarm", data=form)
        assert r.json()["success"], r.text

    def stop_run(self) -> None:
        """What the Stop button does; wait until Locust says it stopped."""
        self.http.post("/stop")
        wait_for(lambda: self.http.get("/stats/requests").json()["state"] == "stopped", 10, 0.2, "Locust's stop")

    def stop(self) -> None:
        self.http.close()
        stop_process(self.proc)
