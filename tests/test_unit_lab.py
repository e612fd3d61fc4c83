"""The lab's parts without a lab: the supervisor's restart policy (Docker's back-off), the one table of lab servers
against the compose files, and `make up`'s link onto PATH. `webmodels up` for real is test_lab_native.py."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from webmodels import config, pathlink, promlab
from webmodels import supervisor as sv
from webmodels.lab import SERVERS
from webmodels.supervisor import RestartPolicy

ROOT = Path(__file__).resolve().parent.parent


# -- the native supervisor's restart back-off (Docker's: 100 ms doubling, reset after 10 s up) -------------------
class _Exited:
    pid = 0
    returncode = 1

    def poll(self) -> int:
        return 1


def test_supervisor_backs_off_doubling_and_forgets_after_10s_up() -> None:
    child = sv.Child("eventloop", ["true"], {})
    child.signal_group = lambda sig: None  # type: ignore[method-assign] # nothing real to signal
    sup = sv.Supervisor([child])
    try:
        def crash_after(uptime: float) -> float:
            """The child dies after UPTIME seconds; return the delay the supervisor picks for its restart."""
            child.proc, child.next_start = _Exited(), 0.0  # type: ignore[assignment]
            child.started = time.monotonic() - uptime
            now = time.monotonic()
            sup._reap()
            return round(child.next_start - now, 2)

        # Docker's policy: 100 ms before the first restart, doubling while the server keeps crashing
        assert [crash_after(1.0) for _ in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.6]
        assert crash_after(sv.BACKOFF_RESET_AFTER + 1) == 0.1  # up long enough: a first crash again
        assert crash_after(1.0) == 0.2
        child.backoff = sv.BACKOFF_MAX
        assert crash_after(1.0) == sv.BACKOFF_MAX  # capped
    finally:
        os.close(sup.wake_r)
        os.close(sup.wake_w)


def test_restart_policy_is_dockers_back_off_or_a_fixed_delay() -> None:
    docker = RestartPolicy()
    waits, prev = [], 0.0
    for _ in range(12):  # crash after crash, each within 10 s of its start
        prev = docker.next_delay(prev, uptime=1.0)
        waits.append(prev)
    assert waits[:6] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2] and waits[-1] == 60.0  # capped at 1 min, as Docker
    assert docker.next_delay(12.8, uptime=10.0) == 0.1  # 10 s up: the back-off is forgotten
    assert RestartPolicy(fixed=0.5).next_delay(12.8, uptime=1.0) == 0.5
    assert RestartPolicy(fixed=0.0).next_delay(0.0, uptime=0.0) == 0.0


# -- the one table of lab servers, and `make up` --------------------------------------------------------------------
def test_every_list_of_the_labs_servers_is_the_one_table() -> None:
    # one table per fact: adding a server is one row of lab.SERVERS, its lab/<name>.env and its compose service;
    # everything else reads the table. The compose files cannot import it, so this test reads them.
    base = (ROOT / "docker-compose.yml").read_text()
    override = (ROOT / "docker-compose.override.yml").read_text()
    ci = (ROOT / "docker-compose.ci.yml").read_text()
    services = set(re.findall(r"^  ([\w-]+):\n    <<: \*server$", base, re.M))
    assert services == set(SERVERS), (services, set(SERVERS))  # no server service outside the table, none missing
    for name, s in SERVERS.items():
        assert (ROOT / s.env_file).is_file(), s.env_file
        block = base.split("\nservices:", 1)[1].split(f"\n  {name}:\n", 1)[1].split("\n\n", 1)[0]
        assert f'command: ["webmodels", "serve", "{name}"]' in block and f"env_file: {s.env_file}" in block, block
        assert f"WEBMODELS_BIND: 0.0.0.0:{s.port}" in block, block
        assert f"  {s.url_env}: http://{name}:{s.port}\n" in base, s.url_env  # Locust's URL, by service name
        assert f"  {name}:\n    condition: service_healthy" in base  # Locust starts after it
        assert f'"127.0.0.1:{s.port}:{s.port}"' in override and f"  {s.url_env}: http://127.0.0.1:{s.port}\n" in ci
        assert f"WEBMODELS_BIND: 127.0.0.1:{s.port}" in ci
        assert promlab.COMPOSE_TARGETS[name] == f"{name}:{s.port}"
        assert s.engine == config.MODEL_ENGINE[name] and s.master == (name in config.MASTER_MODELS)
    # the locustfile makes one user class per row (it is imported by Locust only: read its source)
    assert "type(LAB_SERVERS[server].user_class, (LabUser,)" in (ROOT / "loadtest" / "locustfile.py").read_text()


def test_make_up_links_into_home_first_else_a_system_dir_and_never_over_a_stranger(tmp_path) -> None:
    # the README: "`make up` links `webmodels` into ~/.local/bin (as root, /usr/local/bin)"; here a temporary
    # directory plays /usr/local/bin (the real one is never touched by a test)
    home, system = tmp_path / "home", tmp_path / "usr-local-bin"
    (home / ".local" / "bin").mkdir(parents=True)
    system.mkdir()
    local = str(home / ".local" / "bin")
    assert pathlink.choose([str(system), local], home, [str(system)]) == Path(local)  # $HOME first
    assert pathlink.choose([str(system), "/usr/bin"], home, [str(system)]) == system  # root's login PATH
    assert pathlink.choose(["/usr/bin", "/bin"], home, []) is None  # never a directory dpkg owns
    (system / "webmodels").write_text("#!/bin/sh\n")  # someone else's program of that name
    assert pathlink.choose([str(system)], home, [str(system)]) is None
    (home / ".local" / "bin" / "webmodels").symlink_to("/elsewhere/.venv/bin/webmodels")  # another checkout's
    assert pathlink.choose([local], home, []) == Path(local)


def test_make_up_runs_the_link_then_the_lab_with_its_arguments() -> None:
    res = subprocess.run(["make", "-n", "-C", str(ROOT), "up", "UP_ARGS=--port-offset 7"], capture_output=True,
                         text=True, timeout=30)
    lines = [line.strip() for line in res.stdout.splitlines()]
    link = lines.index(".venv/bin/python -m webmodels.pathlink")
    assert lines[link + 1] == ".venv/bin/webmodels up --port-offset 7", res.stdout
