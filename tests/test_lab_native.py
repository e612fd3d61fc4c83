"""`webmodels up` for real: every URL answers, a crashed event loop is restarted with Docker's back-off (or a
fixed delay), `status`/`kill` know every lab server, the banner's commands work as printed, SIGTERM leaves
nothing. The lab's parts without a lab (the restart policy, the one table, the PATH link): test_unit_lab.py."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from webmodels import launch
from webmodels.events import read_all
from webmodels.lab import SERVERS, events_path, supervisor_state_path

from .support import wait_for
from .support.lab import EVENTLOOP, PORTS, Lab, answers


@pytest.fixture
def lab():
    labs: list[Lab] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Lab:
        labs.append(Lab(*args, env=env))
        return labs[-1]

    yield start
    for lab_ in labs:
        lab_.stop()


def test_up_serves_every_url_restarts_a_crash_and_stops_clean(lab) -> None:
    lab_ = lab()
    # Six servers, four of them forking workers, and Locust boot at once on two shared cores: one deadline for
    # them all, generous (an idle machine takes a few seconds), and the lab's own log when it is missed.
    waiting = list(PORTS)

    def all_answer() -> bool:
        waiting[:] = [p for p in waiting if not answers(lab_.url(p))]
        return not waiting
    try:
        wait_for(all_answer, timeout=120, interval=0.2, what="every port of the lab answering")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: still silent {waiting}; the lab said:\n{lab_.log[-4000:]}") from None
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
    wait_for(respawned, timeout=30, interval=0.1, what="hybrid-threads: the killed worker replaced")
    assert lab_.cli("kill", "threadpool", "--worker").returncode == 2  # no workers: a clear error

    old_pid = httpx.get(lab_.url(8003) + "/whoami", timeout=5).json()["pid"]
    t_crash = time.monotonic()
    with pytest.raises(httpx.HTTPError):
        httpx.get(lab_.url(8003) + "/fault/crash", timeout=5)
    new = wait_for(lambda: httpx.get(lab_.url(8003) + "/whoami", timeout=1).json(), timeout=30,
                   interval=0.005, what="the event loop restarted")  # (a new Python process, on a busy machine)
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
    wait_for(lambda: answers(lab_.url(8001)), timeout=45, interval=0.2, what="first lab up")
    # a second lab on the same ports must refuse to start, naming the port, and start nothing
    second = subprocess.run([sys.executable, "-m", "webmodels.cli", "up", "--no-locust", "--port-offset",
                             str(lab_.offset)], capture_output=True, text=True, timeout=30, env=launch.clean_env())
    assert second.returncode == 2
    assert f"port {8001 + lab_.offset} (threadpool)" in second.stderr
    assert "already in use" in second.stderr
    assert "listening" not in second.stderr


# How late a restart may start after its wait: the supervisor's wake-up on a loaded machine (CI beside another
# test run: 0.83 s late once). Below 1.5 s so the reset's measured wait (0.1 s) is still told from 1.6 s.
LATE_S = 1.2


def test_backoff_doubles_and_resets_after_uptime(lab) -> None:
    # Docker's policy with its real first wait (0.1 s); only the reset period is shortened (10 s → 5 s)
    lab_ = lab("--no-locust", env={"WEBMODELS_BACKOFF_RESET_AFTER": "5"})
    wait_for(lambda: supervisor_state_path(lab_.offset).exists(), timeout=30, what="the state file")
    assert lab_.state()["policy"] == "back-off"
    for _ in range(4):  # each crash as soon as the server answers, well within 5 s of its start: no reset
        lab_.crash_eventloop()
    delays = lab_.restart_delays()
    print("restart delays (s):", [round(d, 3) for d in delays])
    # the policy's waits exactly (the supervisor's record), and the waits as measured: never shorter, and late
    # only by the supervisor's wake-up on a loaded machine (LATE_S)
    assert [h["delay_s"] for h in lab_.history()] == [0.1, 0.2, 0.4, 0.8]
    for want, got in zip((0.1, 0.2, 0.4, 0.8), delays):
        assert want <= got < want + LATE_S, delays
    assert "restarting in 0.8s (back-off)" in lab_.log

    # a server that stayed up past the reset period starts again from the first wait
    wait_for(lambda: httpx.get(lab_.url(EVENTLOOP) + "/_lab/stats", timeout=2).json()["uptime_s"] > 5.5,
             timeout=15, interval=0.1, what="the event loop up for longer than the reset period")
    lab_.crash_eventloop()
    delays = lab_.restart_delays()
    assert lab_.history()[4]["delay_s"] == 0.1 and 0.1 <= delays[4] < 0.1 + LATE_S, delays  # not 1.6: reset
    line = wait_for(lambda: re.search(r"eventloop serving again on :\d+ after (\d+) ms dead \(from its exit to "
                                      r"accepting; restart #5: back-off (\d+) ms \+ start (\d+) ms\)", lab_.log),
                    timeout=10, what="the restart log line")
    dead, backoff, start = map(int, line.groups())  # type: ignore[union-attr]
    assert 100 <= backoff < (0.1 + LATE_S) * 1000 and abs(dead - backoff - start) <= 1, line
    assert "restarting in 0.1s (back-off)" in lab_.log


def test_restart_delay_gives_a_fixed_delay_and_status_shows_it(lab) -> None:
    # 3 s: long enough for `webmodels status` (a Python start and five stats requests) to run inside the wait
    # on a busy machine; two deaths show the delay is fixed (back-off would double it)
    lab_ = lab("--no-locust", "--restart-delay", "3")
    wait_for(lambda: supervisor_state_path(lab_.offset).exists(), timeout=30, what="the state file")
    assert lab_.state()["policy"] == "fixed delay"
    lab_.crash_eventloop()
    # while the supervisor waits, `webmodels status` says so, with the time left (polled: on a loaded machine the
    # first status can run before the supervisor has noticed the death — it then says only DOWN)
    said: list[str] = []

    def waiting_said() -> bool:
        said.append(lab_.cli("status").stdout)
        return bool(re.search(r"eventloop +\d+ DOWN — restart in [0-2]\.\d s \(fixed delay\)", said[-1]))
    try:
        wait_for(waiting_said, timeout=2.8, interval=0.05, what="status saying the restart's wait")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last status:\n{said[-1] if said else '(none ran)'}") from None
    lab_.crash_eventloop()
    delays = lab_.restart_delays()
    print("restart delays (s):", [round(d, 3) for d in delays])
    assert len(delays) == 2 and all(3.0 <= d < 3.3 for d in delays), delays
    assert "restarting in 3.0s (fixed delay)" in lab_.log


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
