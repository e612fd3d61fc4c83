"""`webmodels up` for real, on a free block of ports (`--port-offset`), and the moves a test makes on it."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys

import httpx
import psutil
import pytest

from webmodels import launch
from webmodels.lab import LAB_PORTS, LOCUST_PORT, supervisor_state_path

from .processes import Said, addr_in_use, wait_for

PORTS = (*LAB_PORTS.values(), LOCUST_PORT)  # every port the lab binds, before the offset
EVENTLOOP = LAB_PORTS["eventloop"]


def ephemeral_low() -> int:
    """The first port the kernel hands out to outgoing connections (net.ipv4.ip_local_port_range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_offset() -> int:
    """An offset (a multiple of 100) at which every port of the lab is free right now.

    Every port below the kernel's ephemeral range: a lab port in it can be taken by any outgoing connection on the
    machine between our check and the server's bind — or when the supervisor restarts a server — and that server
    then never comes up (seen with three test runs on two cores: a whole lab module errored at its fixture).
    """
    top = max(2100, ephemeral_low() - max(PORTS))
    for _ in range(50):
        offset = random.randrange(2000, top, 100)
        try:
            for port in PORTS:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
            return offset
        except OSError:
            continue
    raise RuntimeError("no free block of lab ports")


def answers(url: str) -> bool:
    """URL answers 200 (within 2 s)."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Lab(Said):
    """One `webmodels up ARGS` on its own block of ports; stop() leaves nothing running."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        for attempt in range(5):  # the ports were free a moment ago; if one was taken meanwhile, `up` says so
            self.offset = free_offset()
            self.proc = launch.Process([sys.executable, "-m", "webmodels.cli", "up", "--port-offset",
                                        str(self.offset), *args], env=launch.clean_env(env))
            wait_for(lambda: self.proc.poll() is not None or "listening on" in self.log, timeout=45,
                     what="the lab to start or refuse")
            if self.proc.poll() is None or attempt == 4 or not addr_in_use(self.log):
                break

    def url(self, port: int) -> str:
        """The URL of the lab's PORT (as the README names it: 8001 …), shifted to this lab."""
        return f"http://127.0.0.1:{port + self.offset}"

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run `webmodels ARGS --port-offset <this lab's>`."""
        return subprocess.run([sys.executable, "-m", "webmodels.cli", *args, "--port-offset", str(self.offset)],
                              capture_output=True, text=True, timeout=60, env=launch.clean_env())

    def state(self) -> dict:
        """The supervisor's state file."""
        return json.loads(supervisor_state_path(self.offset).read_text())

    def history(self, server: str = "eventloop") -> list[dict]:
        """The supervisor's record of SERVER's deaths and restarts."""
        return self.state()["servers"][server]["history"]

    def crash_eventloop(self) -> None:
        """Wait until the event loop answers, then crash it; return once the supervisor has noted the death."""
        url = self.url(EVENTLOOP)
        wait_for(lambda: answers(url), timeout=30, interval=0.01, what="the event loop answering")
        deaths = len(self.history())
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/fault/crash", timeout=5)
        wait_for(lambda: len(self.history()) > deaths, timeout=10, interval=0.01, what="the supervisor noting the crash")

    def restart_delays(self) -> list[float]:
        """Seconds from each death of the event loop to its restart, from the supervisor's own timestamps."""
        hist = wait_for(lambda: (h := self.history()) and all(d["started_at"] for d in h) and h, timeout=70,
                        interval=0.02, what="every restart done")
        return [h["started_at"] - h["died_at"] for h in hist]

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """Stop the lab (SIGTERM, its own stop), then anything it left behind."""
        kids = self.descendants()
        self.proc.stop(20)
        for kid in kids:  # belt and braces: the test must not leak processes even when it fails
            try:
                kid.kill()
            except psutil.NoSuchProcess:
                pass
