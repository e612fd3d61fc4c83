"""The compose path end to end, on a real Docker engine (run by `make test-compose`, from .ci/run).

Set up by scripts/ci-docker.sh: it exports PYTHON_IMAGE (the registry-free base image), COMPOSE_FILE
(the host-network override, so everything stays on 127.0.0.1) and WEBMODELS_COMPOSE (the compose command).
In CI a missing engine is a failure, never a skip.

The `metrics` profile is up too: its Prometheus (Debian's package, built on the same base image) on the
host network scrapes the five server containers, and the test asks it, not the servers, that every target
is up and every model has request series. Grafana is not started: its image is pulled, which CI cannot.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from typing import Any, Callable

import httpx
import pytest

from webmodels import events
from webmodels.lab import SERVERS

from .support import wait_for

pytestmark = pytest.mark.compose
PROJECT = "webmodels-e2e"
PORTS = {name: s.port for name, s in SERVERS.items()}  # the lab's one table
PROMETHEUS = "http://127.0.0.1:9090"  # docker-compose.ci.yml: prometheus on the host network, loopback only
USERS = tuple(s.user_class for s in SERVERS.values())


def _compose_cmd() -> list[str]:
    cmd = os.environ.get("WEBMODELS_COMPOSE", "")
    if not cmd:
        if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                     capture_output=True).returncode == 0:
            cmd = "docker compose"
        elif shutil.which("docker-compose"):
            cmd = "docker-compose"
    return shlex.split(cmd)


def _engine_ok() -> bool:
    return bool(shutil.which("docker")) and subprocess.run(["docker", "info"], capture_output=True,
                                                           timeout=30).returncode == 0


@pytest.fixture(scope="module")
def compose():
    if not _compose_cmd() or not _engine_ok():
        msg = "no Docker engine / compose here (scripts/ci-docker.sh sets one up)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    # the profile for every command, so that build, up and down all include the prometheus service
    env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT, "COMPOSE_PROFILES": "metrics"}
    env.setdefault("COMPOSE_FILE", "docker-compose.yml:docker-compose.ci.yml")
    base = _compose_cmd()

    def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout, env=env)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(base + list(args))} failed ({res.returncode}):\n"
                                 f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    t0 = time.monotonic()
    run("build", timeout=1200)  # the lab image and webmodels:prometheus (grafana is an image: skipped)
    print(f"compose build: {time.monotonic() - t0:.1f}s")
    run("up", "-d", "prometheus", *PORTS, timeout=300)
    try:
        yield run
    finally:
        logs = run("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        print(logs.stdout[-6000:])
        run("down", "-v", "--remove-orphans", "-t", "5", check=False, timeout=180)


def _container(model: str) -> str:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}",
                          "--filter", f"label=com.docker.compose.service={model}"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    assert out, f"no container for {model}"
    return out[0]


def _inspect(model: str, fmt: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", fmt, _container(model)], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def _get(model: str, path: str, timeout: float = 5, **kw: object) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{PORTS[model]}{path}", timeout=timeout, **kw)  # type: ignore[arg-type]


def _webmodels(*args: str) -> subprocess.CompletedProcess:
    """`webmodels ARGS` on the host, as an attendee runs it beside `docker compose up`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMODELS_")}
    return subprocess.run([sys.executable, "-m", "webmodels.cli", *args], capture_output=True, text=True,
                          timeout=90, env=env)


def _promql(expr: str) -> dict[str, float]:
    """An instant PromQL query on the profile's Prometheus: {model label: value}."""
    r = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return {s["metric"].get("model", ""): float(s["value"][1]) for s in r.json()["data"]["result"]}


def _targets() -> dict[str, str]:
    """Prometheus's view of its scrape targets: {model: health}."""
    r = httpx.get(f"{PROMETHEUS}/api/v1/targets", timeout=5)
    r.raise_for_status()
    return {t["labels"]["model"]: t["health"] for t in r.json()["data"]["activeTargets"]}


def _poll(read: Callable[[], Any], ok: Callable[[Any], bool], timeout: float, what: str) -> Any:
    """wait_for READ() to satisfy OK, saying on timeout what READ returned last."""
    last: list[Any] = [None]

    def check() -> bool:
        last[0] = read()
        return ok(last[0])
    try:
        wait_for(check, timeout=timeout, interval=0.5, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last[0]!r}") from None
    return last[0]


def _ready() -> bool:
    try:
        return httpx.get(f"{PROMETHEUS}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_compose_lab_end_to_end(compose) -> None:
    # 1. every lab server becomes healthy on their ports
    for model in PORTS:
        wait_for(lambda: _inspect(model, "{{.State.Health.Status}}") == "healthy", timeout=120, interval=1,
                 what=f"{model} healthy")
        stats = _get(model, "/_lab/stats").json()
        assert stats["model"] == model and stats["config"]["faults"] is True

    # 2. a headless Locust run from the compose `locust` service against every lab server
    res = compose("run", "--rm", "locust", "locust", "--headless", "-u", "10", "-r", "10", "-t", "6s",
                  "--workload", "io", "--io-ms", "20", *USERS, timeout=180, check=False)
    out = res.stdout + res.stderr
    for model in PORTS:
        assert f"{model} /io" in out, f"no row for {model} in the Locust run:\n{out[-4000:]}"
    assert res.returncode == 0, out[-4000:]
    # -t 6s lasts 6 s (it ended 40 ms after the spawn when Locust armed it from a clock stale since its imports)
    armed, reached = (datetime.strptime(re.search(rf"\[([\d-]+ [\d:,]+)\] \S+ {what}", out).group(1),  # type: ignore
                                        "%Y-%m-%d %H:%M:%S,%f") for what in ("Run time limit set", "--run-time limit"))
    assert (reached - armed).total_seconds() >= 5.5, out[-4000:]
    assert "accounting written to accounting.json" in out, out[-4000:]  # its working directory is writable

    # 2b. the metrics profile: Prometheus in its container scrapes every server, and has every model's requests
    wait_for(_ready, timeout=60, interval=0.5, what="Prometheus ready on 127.0.0.1:9090")
    _poll(_targets, lambda t: t == {m: "up" for m in PORTS}, 30, "every target up in Prometheus")
    requests = "sum by (model) (http_server_request_duration_seconds_count)"
    # every model served Locust's requests (its rows above): a scrape or two later, Prometheus has them all
    counts = _poll(lambda: _promql(requests), lambda c: set(c) == set(PORTS) and min(c.values()) > 0, 30,
                   "request series for every model in Prometheus")
    prefork_before = counts["prefork"]

    # 3. killing a worker of each master model leaves it serving with its full count of workers
    for model, count in (("prefork", 4), ("hybrid-threads", 2), ("hybrid-loop", 2)):
        before = {p["pid"] for p in _get(model, "/_lab/stats").json()["processes"] if p["role"] == "worker"}
        r = httpx.post(f"http://127.0.0.1:{PORTS[model]}/_lab/kill?target=worker", timeout=5)
        assert r.status_code == 202 and r.json()["pid"] in before, (model, r.text)
        wait_for(lambda: _get(model, "/_lab/stats").json()["counters"]["worker_exits"]["signal"] >= 1,
                 timeout=15, what=f"the kill seen by the {model} master")
        assert _get(model, "/").status_code == 200

        def replaced() -> bool:
            workers = {p["pid"] for p in _get(model, "/_lab/stats").json()["processes"] if p["role"] == "worker"}
            return len(workers) == count and r.json()["pid"] not in workers
        wait_for(replaced, timeout=15, what=f"{model}: the killed worker replaced")

    # 3b. ... and prefork's count, scraped from whichever worker answers, did not go backwards
    after_kills = time.time()  # the containers share this host's clock
    _poll(lambda: _promql('timestamp(up{model="prefork"})'), lambda t: t.get("prefork", 0) > after_kills + 0.5,
          15, "a prefork scrape after the kills")
    assert _promql(requests)["prefork"] >= prefork_before, (prefork_before, _promql(requests))

    # 4. /fault/crash on the event loop: Docker restarts the container and it serves again
    restarts = int(_inspect("eventloop", "{{.RestartCount}}"))
    with pytest.raises(httpx.HTTPError):
        _get("eventloop", "/fault/crash")
    wait_for(lambda: int(_inspect("eventloop", "{{.RestartCount}}")) > restarts, timeout=60,
             what="eventloop RestartCount to rise")
    wait_for(lambda: _get("eventloop", "/").status_code == 200, timeout=60, interval=0.1,
             what="eventloop serving again")

    # 4b. `webmodels kill` on the host goes through the engine: a worker, then a *hung* event loop (its routes
    # cannot answer, so only the engine can end it), each confirmed gone (issue 18 item 1)
    res = _webmodels("kill", "prefork", "--worker", "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 0 and out["where"] == "docker" and out["facts"]["gone"] is True, res
    wait_for(lambda: len(_get("prefork", "/_lab/stats").json()["per_worker"]) == 4, timeout=15,
             what="prefork: the worker killed through the engine replaced")
    restarts = int(_inspect("eventloop", "{{.RestartCount}}"))
    with pytest.raises(httpx.TimeoutException):
        _get("eventloop", "/fault/hang?s=3600", timeout=1)
    res = _webmodels("kill", "eventloop", "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 0 and out["facts"]["confirmed_by"] == "docker inspect", res
    wait_for(lambda: int(_inspect("eventloop", "{{.RestartCount}}")) > restarts, timeout=60,
             what="Docker restarting the killed event loop (a kill is a crash to it, not a stop)")
    wait_for(lambda: _get("eventloop", "/").status_code == 200, timeout=60, interval=0.1,
             what="eventloop serving again after the kill")

    # 4c. every fault and kill above is in the one event log on the shared volume, once, by whoever did it
    log = subprocess.run(["docker", "exec", _container("eventloop"), "cat", "/var/lib/webmodels/events.jsonl"],
                         capture_output=True, text=True, timeout=30).stdout
    seen = [(e["server"], e["kind"], e["via"]) for e in events.parse(log.splitlines())]
    for model in ("prefork", "hybrid-threads", "hybrid-loop"):
        assert seen.count((model, "kill", "route")) == 1, seen  # step 3's POST /_lab/kill, logged by the server
    assert ("eventloop", "crash", "route") in seen and ("eventloop", "hang", "route") in seen, seen
    assert ("prefork", "kill", "docker") in seen and ("eventloop", "kill", "docker") in seen, seen

    # 4e. the Exercises tab's buttons in compose: they run in Locust's container, where there is no engine and no
    # pid — over the published routes a button does what it can (exercise G's call in C, exercise 1's worker
    # kill) and says what it cannot: a hung server's kill needs the engine, on the host (issue 19)
    code = ("import json; from webmodels import actions, exercises, exercise_actions as xa; "
            "lab = actions.Lab.here(docker=False); "
            "print(json.dumps({'where': lab.where, **{k: xa.run(exercises.exercise(e).action(k), lab).to_dict() "
            "for e, k in (('G', 'cblock-greenthreads'), ('1', 'kill-prefork-worker'))}}))")
    res = compose("run", "--rm", "--no-deps", "locust", "python3", "-c", code, timeout=120)
    tab = json.loads(res.stdout.strip().splitlines()[-1])
    assert tab["where"] == "http", tab
    assert tab["cblock-greenthreads"]["ok"] and tab["cblock-greenthreads"]["facts"]["waited_ms"] >= 1000, tab
    assert tab["kill-prefork-worker"]["ok"], tab
    with pytest.raises(httpx.TimeoutException):
        _get("greenthreads", "/fault/hang?s=3600", timeout=1)
    code = ("import json; from webmodels import actions; "
            "print(json.dumps(actions.kill('greenthreads', lab=actions.Lab.here(docker=False)).to_dict()))")
    res = compose("run", "--rm", "--no-deps", "locust", "python3", "-c", code, timeout=120, check=False)
    refused = json.loads(res.stdout.strip().splitlines()[-1])
    assert not refused["ok"] and "webmodels kill greenthreads" in refused["message"], refused
    res = _webmodels("kill", "greenthreads", "--json")  # on the host, through the engine
    assert res.returncode == 0 and json.loads(res.stdout)["facts"]["confirmed_by"] == "docker inspect", res
    wait_for(lambda: _get("greenthreads", "/").status_code == 200, timeout=60, interval=0.1,
             what="greenthreads serving again after the kill")

    # 4d. why `webmodels kill` goes through `docker exec`: `docker kill` is a stop to Docker's restart policy
    # (the README says so) — unless-stopped leaves the container down
    restarts = int(_inspect("threadpool", "{{.RestartCount}}"))
    subprocess.run(["docker", "kill", _container("threadpool")], capture_output=True, timeout=30, check=True)
    time.sleep(3)  # Docker's first restart would come after 100 ms
    assert _inspect("threadpool", "{{.State.Status}} {{.RestartCount}}") == f"exited {restarts}"

    # 5. down (-v: the event log's volume too) leaves nothing running
    compose("down", "-v", "--remove-orphans", "-t", "5", timeout=180)
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                          capture_output=True, text=True, timeout=30).stdout.split()
    assert left == [], f"containers left after down: {left}"
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                             capture_output=True, text=True, timeout=30).stdout.split()
    assert volumes == [], f"volumes left after down -v: {volumes}"
    for url in [f"http://127.0.0.1:{port}/" for port in PORTS.values()] + [f"{PROMETHEUS}/-/ready"]:
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, timeout=2)
