"""`webmodels up` for real: four URLs answer, a crashed event loop is restarted, SIGTERM leaves nothing."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from .support import addr_in_use, wait_for

PORTS = (8001, 8002, 8003, 8089)


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
    def __init__(self, *args: str) -> None:
        for attempt in range(5):  # the ports were free a moment ago; if one was taken meanwhile, `up` says so
            self.offset = _free_offset()
            env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMODELS_")}
            self.proc = subprocess.Popen([sys.executable, "-m", "webmodels.cli", "up", "--port-offset",
                                          str(self.offset), *args], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, env=env)
            self.lines: list[str] = []
            threading.Thread(target=self._read, daemon=True).start()
            wait_for(lambda: self.proc.poll() is not None or "listening on" in self.log, timeout=45,
                     what="the lab to start or refuse")
            if self.proc.poll() is None or attempt == 4 or not addr_in_use(self.log):
                break

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip())

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port + self.offset}"

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


@pytest.fixture
def lab():
    labs: list[Lab] = []

    def start(*args: str) -> Lab:
        labs.append(Lab(*args))
        return labs[-1]

    yield start
    for lab_ in labs:
        kids = lab_.descendants()
        if lab_.proc.poll() is None:
            lab_.proc.send_signal(signal.SIGTERM)
            try:
                lab_.proc.wait(20)
            except subprocess.TimeoutExpired:
                lab_.proc.kill()
        for kid in kids:  # belt and braces: the test must not leak processes even when it fails
            try:
                kid.kill()
            except psutil.NoSuchProcess:
                pass


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def test_up_serves_four_urls_restarts_a_crash_and_stops_clean(lab) -> None:
    lab_ = lab()
    for port in PORTS:
        wait_for(lambda: _answers(lab_.url(port)), timeout=45, interval=0.2, what=f"port {port} answering")
    assert "webmodels lab is up" in "\n".join(lab_.lines) or wait_for(
        lambda: "webmodels lab is up" in lab_.log, timeout=10, what="the welcome text")
    # same settings as compose: faults are on, prefork runs lab/prefork.env's worker count
    stats = httpx.get(lab_.url(8002) + "/_lab/stats", timeout=5).json()
    assert stats["config"]["faults"] is True and stats["counters"]["workers"] == 4

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
    assert len(kids) >= 7  # 3 servers + 4 prefork workers (+ locust)
    lab_.proc.send_signal(signal.SIGTERM)
    assert lab_.proc.wait(30) == 0
    wait_for(lambda: not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE],
             timeout=15, what="every child of the lab gone")
    assert "lab stopped" in lab_.log


def test_busy_port_is_a_clear_error(lab) -> None:
    lab_ = lab("--no-locust")
    wait_for(lambda: _answers(lab_.url(8001)), timeout=45, interval=0.2, what="first lab up")
    # a second lab on the same ports must refuse to start, naming the port, and start nothing
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMODELS_")}
    second = subprocess.run([sys.executable, "-m", "webmodels.cli", "up", "--no-locust", "--port-offset",
                             str(lab_.offset)], capture_output=True, text=True, timeout=30, env=env)
    assert second.returncode == 2
    assert f"port {8001 + lab_.offset} (threadpool)" in second.stderr
    assert "already in use" in second.stderr
    assert "listening" not in second.stderr
