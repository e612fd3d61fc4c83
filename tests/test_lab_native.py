"""`webmodels up` for real: six URLs answer, a crashed event loop is restarted with Docker's back-off (or a
fixed delay), `status`/`kill` know every lab server, SIGTERM leaves nothing."""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from webmodels import launch
from webmodels.events import read_all
from webmodels.lab import SERVERS, events_path, supervisor_state_path

from .support import addr_in_use, wait_for

PORTS = (8001, 8002, 8003, 8004, 8005, 8006, 8089)
EVENTLOOP = 8003


def _free_offset() -> int:
    for _ in range(50):
        offset = random.randrange(20000, 50000, 100)
        try:
            for port in PORTS:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
            return offset
        except OSError:
            continue
    raise RuntimeError("no free block of lab ports")


class Lab:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        for attempt in range(5):  # the ports were free a moment ago; if one was taken meanwhile, `up` says so
            self.offset = _free_offset()
            self.proc = launch.Process([sys.executable, "-m", "webmodels.cli", "up", "--port-offset",
                                        str(self.offset), *args], env=launch.clean_env(env))
            wait_for(lambda: self.proc.poll() is not None or "listening on" in self.log, timeout=45,
                     what="the lab to start or refuse")
            if self.proc.poll() is None or attempt == 4 or not addr_in_use(self.log):
                break

    @property
    def lines(self) -> list[str]:
        return self.proc.lines

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port + self.offset}"

    @property
    def log(self) -> str:
        return self.proc.log

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run `webmodels ARGS --port-offset <this lab's>`."""
        return subprocess.run([sys.executable, "-m", "webmodels.cli", *args, "--port-offset", str(self.offset)],
                              capture_output=True, text=True, timeout=60, env=launch.clean_env())

    def state(self) -> dict:
        """The supervisor's state file."""
        return json.loads(supervisor_state_path(self.offset).read_text())

    def crash_eventloop(self) -> None:
        """Wait until the event loop answers, then crash it; return once the supervisor has noted the death."""
        url = self.url(EVENTLOOP)
        wait_for(lambda: _answers(url), timeout=30, interval=0.01, what="the event loop answering")
        deaths = len(self.state()["servers"]["eventloop"]["history"])
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/fault/crash", timeout=5)
        wait_for(lambda: len(self.state()["servers"]["eventloop"]["history"]) > deaths, timeout=10,
                 interval=0.01, what="the supervisor noting the crash")

    def restart_delays(self) -> list[float]:
        """Seconds from each death of the event loop to its restart, from the supervisor's own timestamps."""
        hist = wait_for(lambda: [h for h in self.state()["servers"]["eventloop"]["history"]]
                        if all(h["started_at"] for h in self.state()["servers"]["eventloop"]["history"]) else None,
                        timeout=70, interval=0.02, what="every restart done")
        return [h["started_at"] - h["died_at"] for h in hist]  # type: ignore[union-attr]

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


@pytest.fixture
def lab():
    labs: list[Lab] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Lab:
        labs.append(Lab(*args, env=env))
        return labs[-1]

    yield start
    for lab_ in labs:
        kids = lab_.descendants()
        lab_.proc.stop(20)
        for kid in kids:  # belt and braces: the test must not leak processes even when it fails
            try:
                kid.kill()
            except psutil.NoSuchProcess:
                pass


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_up_serves_every_url_restarts_a_crash_and_stops_clean(lab) -> None:
    lab_ = lab()
    for port in PORTS:
        wait_for(lambda: _answers(lab_.url(port)), timeout=45, interval=0.2, what=f"port {port} answering")
    assert "webmodels lab is up" in "\n".join(lab_.lines) or wait_for(
        lambda: "webmodels lab is up" in lab_.log, timeout=10, what="the welcome text")
    # same settings as compose: faults are on, the master models run lab/<model>.env's worker counts
    for port, model, workers in ((8002, "prefork", 4), (8004, "hybrid-threads", 2), (8005, "hybrid-loop", 2)):
        stats = httpx.get(lab_.url(port) + "/_lab/stats", timeout=5).json()
        assert stats["model"] == model and stats["config"]["faults"] is True, stats
        assert stats["counters"]["workers"] == workers and len(stats["per_worker"]) == workers, stats
    assert httpx.get(lab_.url(8004) + "/_lab/stats", timeout=5).json()["config"]["threads"] == 16

    # `webmodels status` knows all six, by the lab's ports
    res = lab_.cli("status", "--json")
    rows = json.loads(res.stdout)
    assert res.returncode == 0 and [r["model"] for r in rows] == list(SERVERS), res
    assert all(r["up"] for r in rows) and rows[3]["size"].startswith("2 workers"), rows
    assert rows[5]["size"].endswith("ms") and "/1000 greenlets" in rows[5]["size"], rows
    assert [r["port"] for r in rows] == [p + lab_.offset for p in PORTS[:6]]

    # `webmodels kill hybrid-threads` kills one worker (the default for a master model); the master respawns it
    before = httpx.get(lab_.url(8004) + "/_lab/stats", timeout=5).json()
    res = lab_.cli("kill", "hybrid-threads", "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 0 and out["ok"] and out["where"] == "native" and out["facts"]["gone"], res
    killed = out["facts"]["pid"]
    assert killed in {w["pid"] for w in before["per_worker"]} and killed != before["pid"]

    def respawned() -> bool:
        st = httpx.get(lab_.url(8004) + "/_lab/stats", timeout=5).json()
        pids = {w["pid"] for w in st["per_worker"]}
        return st["pid"] == before["pid"] and len(pids) == 2 and killed not in pids
    wait_for(respawned, timeout=15, interval=0.1, what="hybrid-threads: the killed worker replaced")
    assert lab_.cli("kill", "threadpool", "--worker").returncode == 2  # no workers: a clear error

    old_pid = httpx.get(lab_.url(8003) + "/whoami", timeout=5).json()["pid"]
    t_crash = time.monotonic()
    with pytest.raises(httpx.HTTPError):
        httpx.get(lab_.url(8003) + "/fault/crash", timeout=5)
    new = wait_for(lambda: httpx.get(lab_.url(8003) + "/whoami", timeout=1).json(), timeout=10,
                   interval=0.005, what="the event loop restarted")
    down_s = time.monotonic() - t_crash
    assert new["pid"] != old_pid
    print(f"event loop back after {down_s * 1000:.0f} ms (measured by the test, poll included)")
    wait_for(lambda: "serving again" in lab_.log, timeout=10, what="the restart log line")
    assert httpx.get(lab_.url(8003) + "/_lab/stats", timeout=5).json()["restarts"] == 1

    kids = lab_.descendants()
    assert len(kids) >= 13  # 5 servers + 4 prefork and 2 + 2 hybrid workers (+ locust)
    lab_.proc.send_signal(signal.SIGTERM)
    assert lab_.proc.wait(30) == 0
    wait_for(lambda: not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE],
             timeout=15, what="every child of the lab gone")
    assert "lab stopped" in lab_.log
    assert not supervisor_state_path(lab_.offset).exists() and not events_path(lab_.offset).exists()  # no litter


def test_busy_port_is_a_clear_error(lab) -> None:
    lab_ = lab("--no-locust")
    wait_for(lambda: _answers(lab_.url(8001)), timeout=45, interval=0.2, what="first lab up")
    # a second lab on the same ports must refuse to start, naming the port, and start nothing
    second = subprocess.run([sys.executable, "-m", "webmodels.cli", "up", "--no-locust", "--port-offset",
                             str(lab_.offset)], capture_output=True, text=True, timeout=30, env=launch.clean_env())
    assert second.returncode == 2
    assert f"port {8001 + lab_.offset} (threadpool)" in second.stderr
    assert "already in use" in second.stderr
    assert "listening" not in second.stderr


def test_backoff_doubles_and_resets_after_uptime(lab) -> None:
    # Docker's policy with its real first wait (0.1 s); only the reset period is shortened (10 s → 5 s)
    lab_ = lab("--no-locust", env={"WEBMODELS_BACKOFF_RESET_AFTER": "5"})
    wait_for(lambda: supervisor_state_path(lab_.offset).exists(), timeout=30, what="the state file")
    assert lab_.state()["policy"] == "back-off"
    for _ in range(4):  # each crash as soon as the server answers, well within 5 s of its start: no reset
        lab_.crash_eventloop()
    delays = lab_.restart_delays()
    print("restart delays (s):", [round(d, 3) for d in delays])
    for want, got in zip((0.1, 0.2, 0.4, 0.8), delays):
        assert want <= got < want + 0.3, delays
    assert "restarting in 0.8s (back-off)" in lab_.log

    # a server that stayed up past the reset period starts again from the first wait
    wait_for(lambda: httpx.get(lab_.url(EVENTLOOP) + "/_lab/stats", timeout=2).json()["uptime_s"] > 5.5,
             timeout=15, interval=0.1, what="the event loop up for longer than the reset period")
    lab_.crash_eventloop()
    delays = lab_.restart_delays()
    assert 0.1 <= delays[4] < 0.4, delays
    line = wait_for(lambda: re.search(r"eventloop serving again on :\d+ after (\d+) ms dead \(from its exit to "
                                      r"accepting; restart #5: back-off (\d+) ms \+ start (\d+) ms\)", lab_.log),
                    timeout=10, what="the restart log line")
    dead, backoff, start = map(int, line.groups())  # type: ignore[union-attr]
    assert 100 <= backoff < 400 and abs(dead - backoff - start) <= 1, line
    assert "restarting in 0.1s (back-off)" in lab_.log


def test_restart_delay_gives_a_fixed_delay_and_status_shows_it(lab) -> None:
    # 3 s: long enough for `webmodels status` (a Python start and five stats requests) to run inside the wait
    # on a busy machine; two deaths show the delay is fixed (back-off would double it)
    lab_ = lab("--no-locust", "--restart-delay", "3")
    wait_for(lambda: supervisor_state_path(lab_.offset).exists(), timeout=30, what="the state file")
    assert lab_.state()["policy"] == "fixed delay"
    lab_.crash_eventloop()
    # while the supervisor waits, `webmodels status` says so, with the time left
    res = lab_.cli("status")
    assert re.search(r"eventloop +\d+ DOWN — restart in [0-2]\.\d s \(fixed delay\)", res.stdout), res.stdout
    lab_.crash_eventloop()
    delays = lab_.restart_delays()
    print("restart delays (s):", [round(d, 3) for d in delays])
    assert len(delays) == 2 and all(3.0 <= d < 3.3 for d in delays), delays
    assert "restarting in 3.0s (fixed delay)" in lab_.log


def test_restart_policy_is_dockers_back_off_or_a_fixed_delay() -> None:
    from webmodels.supervisor import RestartPolicy
    docker = RestartPolicy()
    waits, prev = [], 0.0
    for _ in range(12):  # crash after crash, each within 10 s of its start
        prev = docker.next_delay(prev, uptime=1.0)
        waits.append(prev)
    assert waits[:6] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2] and waits[-1] == 60.0  # capped at 1 min, as Docker
    assert docker.next_delay(12.8, uptime=10.0) == 0.1  # 10 s up: the back-off is forgotten
    assert RestartPolicy(fixed=0.5).next_delay(12.8, uptime=1.0) == 0.5
    assert RestartPolicy(fixed=0.0).next_delay(0.0, uptime=0.0) == 0.0


def test_every_list_of_the_labs_servers_is_the_one_table() -> None:
    # one table per fact: adding a server is one row of lab.SERVERS, its lab/<name>.env and its compose service;
    # everything else reads the table. The compose files cannot import it, so this test reads them.
    from pathlib import Path

    from webmodels import config, promlab
    from webmodels.lab import SERVERS

    root = Path(__file__).resolve().parent.parent
    base = (root / "docker-compose.yml").read_text()
    override = (root / "docker-compose.override.yml").read_text()
    ci = (root / "docker-compose.ci.yml").read_text()
    services = set(re.findall(r"^  ([\w-]+):\n    <<: \*server$", base, re.M))
    assert services == set(SERVERS), (services, set(SERVERS))  # no server service outside the table, none missing
    for name, s in SERVERS.items():
        assert (root / s.env_file).is_file(), s.env_file
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
    assert "type(LAB_SERVERS[server].user_class, (LabUser,)" in (root / "loadtest" / "locustfile.py").read_text()


def _fresh_shell(home, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """COMMAND in a newcomer's next terminal: a login shell with a clean environment (`env -i`)."""
    return subprocess.run(["env", "-i", f"HOME={home}", "PATH=/usr/bin:/bin", "bash", "-lc", command],
                          capture_output=True, text=True, timeout=timeout)


def test_banner_commands_work_as_printed_in_a_fresh_shell(lab, tmp_path) -> None:
    # issue 18 item 8: `make up` puts `webmodels` on a new shell's PATH and its banner's commands run as printed
    import shutil
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy("/etc/skel/.profile", home / ".profile")  # what a new Debian/Ubuntu user has
    assert _fresh_shell(home, "command -v webmodels").returncode != 0  # not there before
    make_up = subprocess.run([sys.executable, "-m", "webmodels.pathlink"], capture_output=True, text=True,
                             timeout=60, env={**launch.clean_env(), "HOME": str(home)})
    assert f"linked {home}/.local/bin/webmodels" in make_up.stdout, make_up
    assert _fresh_shell(home, "command -v webmodels").stdout.strip() == f"{home}/.local/bin/webmodels"

    lab_ = lab()
    banner = wait_for(lambda: "Ctrl-C stops everything" in lab_.log and lab_.log.split("webmodels lab is up")[1],
                      timeout=60, what="the banner")
    commands = re.findall(r"^ +(?:\d\. )?((?:webmodels|curl) \S.*?)(?:  +\(.*)?$", banner, re.M)  # type: ignore
    assert [c.split()[:2] for c in commands] == [["webmodels", "kill"], ["curl", f"http://127.0.0.1:"
                                                 f"{EVENTLOOP + lab_.offset}/fault/crash"], ["webmodels", "status"]]
    assert all(c.endswith(f"--port-offset {lab_.offset}") for c in commands if c.startswith("webmodels")), commands
    kill, crash, status = commands
    res = _fresh_shell(home, kill)
    assert res.returncode == 0 and "gone" in res.stdout, res
    res = _fresh_shell(home, crash)
    assert res.returncode == 52, res  # curl: "Empty reply from server" — the event loop died answering
    wait_for(lambda: "eventloop serving again" in lab_.log, timeout=30, what="the event loop restarted")
    res = _fresh_shell(home, status)
    assert res.returncode == 0 and "eventloop" in res.stdout and "DOWN" not in res.stdout, res
    kinds = [(e["server"], e["kind"], e["via"]) for e in read_all(str(events_path(lab_.offset)))]
    assert kinds == [("prefork", "kill", "pid"), ("eventloop", "crash", "route")], kinds  # counted, whoever did it


def test_min_rate_only_lengthens_a_deadline(start_server) -> None:
    # README exercise 7 and `--min-rate`'s help (issue 18 item 13): alone, --min-rate cuts a trickler at about
    # --header-timeout (never sooner), while a client at the rate or faster outlasts --header-timeout.
    # Scaled down: --header-timeout 1, a trickler at 10 B/s (cut at 1/(1 - 10/100) = 1.11 s), a sender at 300 B/s.
    srv = start_server("eventloop", "--header-timeout", "1", "--min-rate", "100")

    def send(rate: float, head: bytes) -> tuple[float, bytes]:
        """Send HEAD at RATE bytes per second (in 10 pieces a second); return when it ended and what came back."""
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            t0, step = time.monotonic(), max(1, int(rate / 10))
            for i in range(0, len(head), step):
                try:
                    s.sendall(head[i:i + step])
                except OSError:
                    break
                time.sleep(0.1)
                s.setblocking(False)
                try:
                    if s.recv(1, socket.MSG_PEEK):
                        break  # the server answered (a 408) before the head was complete
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
            s.settimeout(10)
            reply = s.recv(200)
            return time.monotonic() - t0, reply

    took, reply = send(10, b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 1000)
    assert reply.startswith(b"HTTP/1.1 408") and 1.0 <= took < 1.6, (took, reply)
    took, reply = send(300, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: " + b"a" * 600 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and took > 1.9, (took, reply)  # 2 s of head: past --header-timeout


def test_make_up_links_into_home_first_else_a_system_dir_and_never_over_a_stranger(tmp_path) -> None:
    # the README: "`make up` links `webmodels` into ~/.local/bin (as root, /usr/local/bin)"; here a temporary
    # directory plays /usr/local/bin (the real one is never touched by a test)
    from webmodels import pathlink

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
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run(["make", "-n", "-C", str(root), "up", "UP_ARGS=--port-offset 7"], capture_output=True,
                         text=True, timeout=30)
    lines = [line.strip() for line in res.stdout.splitlines()]
    link = lines.index(".venv/bin/python -m webmodels.pathlink")
    assert lines[link + 1] == ".venv/bin/webmodels up --port-offset 7", res.stdout
