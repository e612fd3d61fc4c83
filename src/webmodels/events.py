"""The lab's event log: every fault and every control action, whoever started it, one JSON line each.

Why a file: the fault that matters most ends the process that would have to report it. A server records a
fault route *before* it strikes (app.py calls `route_entered` next to its metrics count), with one
`write()` on a descriptor opened O_APPEND: the line is in the kernel's page cache before `os._exit` or
SIGSEGV, so it survives the crash of a single-process server, and concurrent writers (every server, every
prefork worker, the CLI, Locust) never interleave inside a line. A kill done from outside (the CLI's
SIGKILL to a pid, `docker exec … kill`) is recorded by whoever does it (webmodels.actions).

Where: the path is in WEBMODELS_EVENTS. `webmodels up` sets it for every child (lab.events_path(offset),
next to its state file, emptied at its start, removed when it stops) and names it in its state file;
docker-compose.yml points
it at a named volume shared by the servers and Locust. Unset: nothing is recorded (a server started by
hand or by the tests writes nothing).

One record per line (keys may be added, never renamed):
  t       epoch seconds when it was recorded (before the fault struck)
  server  the lab server's name ("eventloop")
  kind    crash | segfault | hang | leak | raise | kill (faults) | scale (not a fault)
  fault   true if it injures the server (counted as "Faults injected"; a scale is an action, not a fault)
  via     "route" (the server recorded its own fault route) or "pid" / "docker" (killed from outside)
  by      who asked: the X-Webmodels-By header ("webmodels kill", "exercises tab"), else the client's
          User-Agent (curl/8.5.0, python/gevent-http-client… = Locust), else "?"
  pid     the process that recorded it (route) or that was killed (pid, docker)
  target  kill: "worker" or "process";  path: the route with its query ("/fault/hang?s=3600")

Readers count faults from here, so a fault is counted once whoever fired it: Locust's own injector goes
through the same fault routes and is recorded by the server like a `curl`; Locust no longer adds its own.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable

from . import faults

ENV = "WEBMODELS_EVENTS"
BY_HEADER = b"x-webmodels-by"  # who asks, when a lab tool sends the request (the CLI, the Exercises tab)
FAULT_KINDS = ("crash", "segfault", "hang", "leak", "raise", "kill")
MAX_LINE = 4000  # one write() per record; far below PIPE_BUF-like limits that matter for O_APPEND files


def path() -> str:
    """The event log this process writes to ("" = none)."""
    return os.environ.get(ENV, "")


def kind_of(route: str) -> str:
    """The event kind of a lab route: "/fault/crash" → "crash", "/_lab/kill" → "kill", "/_lab/scale" → "scale".

    Its fault kind from the one fault table (faults.kind_of), except a kill: the event says "kill" and keeps
    its target (worker or process) in a field of its own, as a kill from outside does (webmodels.actions).
    """
    return faults.route_kind(route)


def record(server: str, kind: str, *, via: str, by: str = "?", pid: int | None = None,
           target: str | None = None, route: str | None = None, to: str | None = None,
           t: float | None = None, **facts: Any) -> dict[str, Any] | None:
    """Append one event to the log TO (default: this process's, from WEBMODELS_EVENTS); return it (None: no log).

    Never raises: recording must not stop the fault or the kill it records.
    """
    target_path = to if to is not None else path()
    if not target_path:
        return None
    event = {"t": round(time.time() if t is None else t, 6), "server": server, "kind": kind,
             "fault": kind in FAULT_KINDS, "via": via, "by": by[:80], "pid": pid if pid is not None else os.getpid()}
    if target:
        event["target"] = target
    if route:
        event["path"] = route[:200]
    event.update(facts)
    line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    if len(line) > MAX_LINE:
        return None
    try:
        fd = os.open(target_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)  # one write: the whole line or nothing, never interleaved with another writer
        finally:
            os.close(fd)
    except OSError:
        return None
    return event


def route_entered(rt: Any, req: Any) -> None:
    """Record a lab route (fault, kill, scale) entered on this server, before it strikes (app.py's hook)."""
    if not path():
        return
    try:
        by = req.header(BY_HEADER) or req.header(b"user-agent") or b"?"
        target = req.query.get("target", "worker") if req.path == "/_lab/kill" else None
        record(rt.model, kind_of(req.path), via="route", by=by.decode("latin-1"), target=target,
               route=req.target)
    except Exception:  # noqa: BLE001 - the fault must strike whatever happens here
        pass


def who(agent: str) -> str:
    """Say who an event's `by` names, for people: "curl", "Locust", "webmodels kill"."""
    a = agent.lower()
    if "gevent-http-client" in a or "geventhttpclient" in a or "locust" in a:
        return "Locust"
    if a.startswith("curl/"):
        return "curl"
    if a.startswith("python-httpx/"):
        return "a script (httpx)"
    return agent or "?"


class Reader:
    """Follow an event log: each `read()` returns the events appended since the last one."""

    def __init__(self, log_path: str = "") -> None:
        self.path = log_path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        if not self.path:
            return []
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # emptied (a new lab): start over
                    self.offset, self.partial = 0, b""
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()  # an unfinished last line waits for its end
        return list(parse(lines))


def parse(lines: Iterable[bytes | str]) -> Iterable[dict[str, Any]]:
    """The well-formed events among LINES (a torn or foreign line is skipped, not fatal)."""
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("t"), (int, float)) and event.get("server"):
            yield event


def read_all(log_path: str) -> list[dict[str, Any]]:
    """Every event in LOG_PATH (empty if there is none)."""
    return Reader(log_path).read()
