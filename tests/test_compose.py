"""The compose path end to end, on a real Docker engine (run by `make test-compose`, from .ci/run).

Set up by scripts/ci-docker.sh: it exports PYTHON_IMAGE (the registry-free base image), COMPOSE_FILE
(the host-network override, so everything stays on 127.0.0.1) and WEBMODELS_COMPOSE (the compose command).
In CI a missing engine is a failure, never a skip.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time

import httpx
import pytest

from .support import wait_for

pytestmark = pytest.mark.compose
PROJECT = "webmodels-e2e"
PORTS = {"threadpool": 8001, "prefork": 8002, "eventloop": 8003, "hybrid-threads": 8004, "hybrid-loop": 8005}
USERS = ("ThreadpoolUser", "PreforkUser", "EventloopUser", "HybridThreadsUser", "HybridLoopUser")


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
    env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT}
    env.setdefault("COMPOSE_FILE", "docker-compose.yml:docker-compose.ci.yml")
    base = _compose_cmd()

    def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout, env=env)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(base + list(args))} failed ({res.returncode}):\n"
                                 f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    t0 = time.monotonic()
    run("build", timeout=1200)
    print(f"compose build: {time.monotonic() - t0:.1f}s")
    run("up", "-d", *PORTS, timeout=300)
    try:
        yield run
    finally:
        logs = run("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        print(logs.stdout[-6000:])
        run("down", "--remove-orphans", "-t", "5", check=False, timeout=180)


def _container(model: str) -> str:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}",
                          "--filter", f"label=com.docker.compose.service={model}"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    assert out, f"no container for {model}"
    return out[0]


def _inspect(model: str, fmt: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", fmt, _container(model)], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def _get(model: str, path: str, **kw: object) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{PORTS[model]}{path}", timeout=5, **kw)  # type: ignore[arg-type]


def test_compose_lab_end_to_end(compose) -> None:
    # 1. the five servers become healthy on their ports
    for model in PORTS:
        wait_for(lambda: _inspect(model, "{{.State.Health.Status}}") == "healthy", timeout=120, interval=1,
                 what=f"{model} healthy")
        stats = _get(model, "/_lab/stats").json()
        assert stats["model"] == model and stats["config"]["faults"] is True

    # 2. a headless Locust run from the compose `locust` service against all five
    res = compose("run", "--rm", "locust", "locust", "--headless", "-u", "10", "-r", "10", "-t", "6s",
                  "--workload", "io", "--io-ms", "20", *USERS, timeout=180, check=False)
    out = res.stdout + res.stderr
    for model in PORTS:
        assert f"{model} /io" in out, f"no row for {model} in the Locust run:\n{out[-4000:]}"
    assert res.returncode == 0, out[-4000:]

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

    # 4. /fault/crash on the event loop: Docker restarts the container and it serves again
    restarts = int(_inspect("eventloop", "{{.RestartCount}}"))
    with pytest.raises(httpx.HTTPError):
        _get("eventloop", "/fault/crash")
    wait_for(lambda: int(_inspect("eventloop", "{{.RestartCount}}")) > restarts, timeout=60,
             what="eventloop RestartCount to rise")
    wait_for(lambda: _get("eventloop", "/").status_code == 200, timeout=60, interval=0.1,
             what="eventloop serving again")

    # 5. down leaves nothing running
    compose("down", "--remove-orphans", "-t", "5", timeout=180)
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                          capture_output=True, text=True, timeout=30).stdout.split()
    assert left == [], f"containers left after down: {left}"
    for port in PORTS.values():
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
