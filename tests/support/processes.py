"""Waiting with a deadline, free loopback ports, and what the kernel says about a pid or a port."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Callable, TypeVar

import psutil

from webmodels import launch
from webmodels.launch import addr_in_use

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> T:
    """Poll PREDICATE until it returns something truthy, and return that; fail after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" +
                                 (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def free_port() -> int:
    """A port free on 127.0.0.1 right now — and maybe not a moment later: use it through with_free_port()."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_free_port(start: Callable[[int], T], attempts: int = 5) -> T:
    """Call START(port) with a port that was free a moment ago; if it fails because something took the port
    meanwhile (an error that says "address already in use"), try again with another port.

    For tools that cannot bind port 0 and report the port back (Locust's web UI and master port). Servers
    we start ourselves bind port 0 and we read the port from their start-up line (servers.Server).
    """
    for attempt in range(attempts):
        try:
            return start(free_port())
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is a port clash
            if attempt + 1 == attempts or not addr_in_use(str(exc)):
                raise
    raise AssertionError("unreachable")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM PROC (by its PID, never by name), wait up to TIMEOUT, then SIGKILL it."""
    launch.stop(proc, timeout)


def children(pid: int) -> set[int]:
    """The live (not zombie) children of PID; none if PID is gone."""
    out = set()
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return out
    for child in kids:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def gone(pid: int) -> bool:
    """True once PID has exited (a zombie not yet reaped has)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def listening_sockets(port: int) -> int:
    """LISTEN sockets on PORT in this network namespace (/proc/net/tcp and tcp6 list each socket once)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


class Said:
    """What a `launch.Process` in self.proc has said: its lines, and the whole log."""

    proc: launch.Process

    @property
    def lines(self) -> list[str]:
        return self.proc.lines

    @property
    def log(self) -> str:
        return self.proc.log
