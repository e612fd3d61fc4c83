"""The lab's controls — kill, fault, scale, probe — one code path for the CLI, the Locust tabs and the tests.

A control confirms its effect: a kill checks that the process is gone, a scale that the
worker count is reached, a hang that the server really stopped answering; "no answer" is never "killed".

    from webmodels import actions
    lab = actions.Lab.here(offset=0)             # how this process can reach the lab (see "Where" below)
    actions.kill("eventloop", lab=lab)           # SIGKILL the whole server (the default of a single process)
    actions.kill("prefork", "worker", lab=lab)   # one worker (the default of a master model); pid=N: that one
    actions.fault("eventloop", "hang", lab=lab, s=3600)   # crash | segfault | hang (s=) | leak (mb=) | raise
    actions.scale("prefork", +4, lab=lab)
    actions.probe("eventloop", lab=lab)          # up / hung / down, and what is known about its process

Every call returns an `Outcome` and never raises for a lab that misbehaves: `ok` (done *and* confirmed),
`message` (one line for people, what happened or what could not be done and what to run instead), `facts`
(pids, whether the process is confirmed gone, the worker count reached, how it was confirmed, …),
`exit_code` (0 ok, 1 not done or not confirmed) and `to_dict()` for JSON. `by` names who asks ("webmodels
kill", "exercises tab"); it is sent as X-Webmodels-By and lands in the event log.

Where (`Lab.here` decides once, `lab.where` says which):
  native  `webmodels up` runs the lab (its state file, lab.supervisor_state_path(offset) or
          WEBMODELS_SUPERVISOR_STATE, names a live supervisor): the state file knows each server's pid, a
          master's workers are its children (psutil). Kills are os.kill(SIGKILL) by pid, confirmed by psutil
          (the pid is gone, a zombie, or now another process). Works on a hung server.
  docker  a Docker engine answers and runs the lab's compose containers (label com.docker.compose.service):
          `docker exec <container> python3 -m webmodels.actions inside …` runs the native code inside the
          container (the server is the child of docker-init, PID 1), so Docker's restart policy sees a crash,
          not a `docker stop`; a killed server is confirmed from outside by `docker inspect` (a new start
          time or pid, or not running). Works on a hung server.
  http    nothing else (Locust's container in compose has no engine and sees no pid): the server's own
          routes (POST /_lab/kill, /_lab/scale, the fault routes), confirmed by /_lab/stats (the pid left
          per_worker, a new started_at, or a refused connect: nothing listens). A hung server cannot answer
          its kill route: the outcome says so and names the command to run on the host.
Faults and scale always go through the server's routes (that *is* the fault); their confirmation uses the
strongest means available where they run.

Events (webmodels.events): a route records itself on the server before it strikes; a kill from outside
(os.kill here, `docker exec` inside the container) is recorded by this module before the signal. So each
fault is recorded exactly once, by whoever did it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import psutil

from . import events
from .figures import worker_split
from .lab import SERVERS, server_url, supervisor_state_path

FAULTS = ("crash", "segfault", "hang", "leak", "raise")
KILL_CONFIRM_S = 5.0  # SIGKILL is immediate; this only covers a busy machine's scheduling
HANG_GRACE_S = 1.0  # a hang request unanswered this long: the handler is blocked
STATS_TIMEOUT_S = 2.0
SPLIT_READ_S = 1.0  # the per-worker split read just before a worker's kill (a hung server: no split, kill anyway)
SCALE_CONFIRM_S = 20.0  # a removed worker first finishes what it holds (graceful)
RESPAWN_WAIT_S = 3.0
STATE_ENV = "WEBMODELS_SUPERVISOR_STATE"


@dataclass
class Outcome:
    """What a control did, for people (message) and programs (ok, facts)."""

    ok: bool
    message: str
    action: str
    server: str
    where: str
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "action": self.action, "server": self.server,
                "where": self.where, "facts": self.facts}


@dataclass
class Probe:
    """What is known about a server right now: up (answers), hung (alive or accepting, no answer), down."""

    state: str  # up | hung | down
    detail: str  # one line: "pid 15375 alive, no answer to /_lab/stats within 1.5 s"
    stats: dict[str, Any] | None = None
    pid: int | None = None
    alive: bool | None = None  # the server's process exists (None: cannot see it from here)
    accepts: bool | None = None  # its port accepts a TCP connection


# -- where the lab is --------------------------------------------------------------------------------------------
def read_state(path: Path | str) -> dict[str, Any] | None:
    """The native supervisor's state file, or None if there is none or its supervisor is gone (stale)."""
    try:
        doc = json.loads(Path(path).read_text())
        os.kill(int(doc["supervisor_pid"]), 0)
        return doc
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _docker(*args: str, timeout: float = 15.0) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def compose_container(model: str) -> str | None:
    """The running compose container serving MODEL (by its service label), if a Docker engine knows one."""
    if not shutil.which("docker"):
        return None
    res = _docker("ps", "-q", "--filter", f"label=com.docker.compose.service={model}", timeout=10)
    ids = res.stdout.split() if res is not None and res.returncode == 0 else []
    return ids[0] if ids else None


@dataclass
class Lab:
    """How this process reaches the lab: each server's URL, and native pids, a Docker engine or HTTP only."""

    where: str = "http"  # native | docker | http
    offset: int = 0
    urls: dict[str, str] = field(default_factory=dict)
    state_path: Path | None = None

    @classmethod
    def here(cls, offset: int = 0, docker: bool = True, default_state: bool = True) -> "Lab":
        """Find the lab with this port OFFSET: natively (a live supervisor), in Docker, else by HTTP only.

        URLs: WEBMODELS_<MODEL>_URL when set (Locust's environment, in compose the service names), else
        127.0.0.1 and the lab's port + OFFSET. The supervisor's state: WEBMODELS_SUPERVISOR_STATE (set for
        Locust by `webmodels up`), else (DEFAULT_STATE) where `webmodels up --port-offset OFFSET` writes it.
        """
        urls = {m: os.environ.get(s.url_env) or server_url(m, offset=offset) for m, s in SERVERS.items()}
        named = os.environ.get(STATE_ENV) or (str(supervisor_state_path(offset)) if default_state else "")
        state = Path(named) if named else None
        if state is not None and read_state(state) is not None:
            return cls("native", offset, urls, state)
        if docker and compose_container(next(iter(SERVERS))) is not None:
            return cls("docker", offset, urls)
        return cls("http", offset, urls)

    def url(self, model: str) -> str:
        return (self.urls.get(model) or server_url(model, offset=self.offset)).rstrip("/")

    def state(self) -> dict[str, Any] | None:
        return read_state(self.state_path) if self.state_path else None

    def events_path(self) -> str:
        """The event log this lab writes (native: named in the supervisor's state; else WEBMODELS_EVENTS)."""
        return (self.state() or {}).get("events") or events.path()

    def server_pid(self, model: str) -> int | None:
        """Natively: the pid of MODEL's server process (a master model's master), from the supervisor."""
        entry = ((self.state() or {}).get("servers") or {}).get(model) or {}
        return entry.get("pid") if entry.get("state") in ("up", "starting") else None


# -- small HTTP, with the facts a control needs (refused? answered? nothing within the time?) --------------------
@dataclass
class Reply:
    kind: str  # answered | closed (EOF or reset, no answer) | timeout | refused | error
    status: int = 0
    body: bytes = b""
    error: str = ""

    def json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.body)
            return doc if isinstance(doc, dict) else {}
        except ValueError:
            return {}


def request(url: str, method: str, path: str, timeout: float, by: str = "") -> Reply:
    """Send one HTTP/1.1 request (Connection: close) and read the whole answer, or say why there is none.

    A raw socket rather than an HTTP library: a control must tell a refused connect (nothing listens) from a
    connection closed without an answer (the process died) from no answer in time (hung), and must never
    re-send (a client that retries a /fault/crash kills twice).
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Length: 0\r\n"
            + (f"X-Webmodels-By: {by}\r\n" if by else "") + "User-Agent: webmodels-actions\r\n\r\n")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError as exc:
        return Reply("refused", error=str(exc))
    except socket.timeout as exc:
        return Reply("timeout", error=f"connect: {exc}")
    except OSError as exc:
        return Reply("error", error=str(exc))
    data = b""
    try:
        sock.settimeout(timeout)
        sock.sendall(head.encode("latin-1"))
        while chunk := sock.recv(65536):
            data += chunk
    except socket.timeout:
        return Reply("timeout", error=f"no answer within {timeout:g} s")
    except OSError as exc:
        if not data:
            return Reply("closed", error=str(exc))
    finally:
        sock.close()
    if not data:
        return Reply("closed", error="closed without an answer")
    head_b, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head_b.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Reply("error", error=f"not HTTP: {data[:40]!r}")
    return Reply("answered", status, body)


def _refusal(model: str, reply: Reply) -> str | None:
    """What a lab route's refusal means for people (404: the controls are off), or None if it was accepted."""
    if reply.status == 404:
        return f"{model}: lab controls are disabled on this server (start it with --faults / WEBMODELS_FAULTS=1)"
    if reply.status >= 400:
        return f"{model}: {reply.json().get('error') or reply.status}"
    return None


def stats(lab: Lab, model: str, timeout: float = STATS_TIMEOUT_S) -> dict[str, Any] | None:
    """MODEL's /_lab/stats, or None when it does not answer."""
    reply = request(lab.url(model), "GET", "/_lab/stats", timeout)
    return reply.json() or None if reply.kind == "answered" and reply.status == 200 else None


def accepts(url: str, timeout: float = 0.5) -> bool | None:
    """True if URL's port accepts a TCP connection, False if refused, None if neither within TIMEOUT."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return None


# -- processes, seen from the same machine (natively, or inside a container) -----------------------------------
def _identity(pid: int) -> float | None:
    """The process's start time (so a reused pid is not mistaken for it); None if it is gone or a zombie."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def is_gone(pid: int, born: float | None) -> bool:
    """True once PID is dead (gone, a zombie awaiting its parent, or reused by a process born later)."""
    now = _identity(pid)
    return now is None or (born is not None and now != born)


def wait_gone(pids: list[int], borns: dict[int, float | None], timeout: float = KILL_CONFIRM_S) -> list[int]:
    """Poll until every pid is gone; return those still alive at TIMEOUT."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive:
        alive = [p for p in alive if not is_gone(p, borns.get(p))]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    return alive


def children(pid: int) -> list[int]:
    """The live children of PID (a master's workers)."""
    try:
        return [c.pid for c in psutil.Process(pid).children() if _identity(c.pid) is not None]
    except psutil.Error:
        return []


def serves(pid: int, model: str) -> bool:
    """True if PID runs `webmodels serve MODEL` (guards against a stale pid now used by someone else)."""
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return "serve" in argv and (model in argv or argv[-1] == "serve")  # no name: WEBMODELS_MODEL


def busiest(split: list[tuple[int, int]]) -> int:
    """The worker with the most user requests in flight: the first of them in the board's order, as shown."""
    return max(split, key=lambda w: w[1])[0]


def kill_pids(model: str, target: str, server_pid: int, pid: int | str | None, *, via: str, by: str,
              log_path: str, where: str, read_split: Callable[[], list[tuple[int, int]]] | None = None) -> Outcome:
    """SIGKILL MODEL's server (TARGET process) or one worker (TARGET worker; PID, "busiest" or any), then confirm
    it is gone.

    READ_SPLIT: reads (pid, user requests in flight) per worker; called last before the SIGKILL (after the /proc
    scans, which take milliseconds on a busy machine: the counts move meanwhile) and logged with the event, the
    victim's share and the reading's age at the kill — what a kill cost is judged against the split at the kill,
    not a sample up to a second older."""
    out = lambda ok, msg, **facts: Outcome(ok, msg, "kill", model, where, {"target": target, **facts})  # noqa: E731
    workers = children(server_pid)
    if target == "worker":
        if not workers:
            return out(False, f"{model}: no worker processes under pid {server_pid}")
        if isinstance(pid, int) and pid not in workers:
            return out(False, f"{model}: pid {pid} is not a worker of this server (workers: "
                              f"{', '.join(map(str, workers))})", workers=workers)
    born = {p: _identity(p) for p in [server_pid, *workers]}
    t_read = time.monotonic()
    split = read_split() if read_split is not None and target == "worker" else []
    if pid == "busiest":
        if not split:
            return out(False, f"{model}: not answering /_lab/stats — cannot tell its busiest worker")
        pid = busiest(split)
        if pid not in workers:  # a worker respawned between the two looks
            return out(False, f"{model}: its busiest worker {pid} is not among its workers now; try again",
                       workers=workers)
    victim = (pid if isinstance(pid, int) else random.choice(workers)) if target == "worker" else server_pid
    held = {"split": [list(w) for w in split], "in_flight": dict(split).get(victim),
            "split_age_ms": round((time.monotonic() - t_read) * 1000, 1)} if split else {}
    events.record(model, "kill", via=via, by=by, pid=victim, target=target, to=log_path, **held)
    t0 = time.monotonic()
    try:
        os.kill(victim, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already dead: the confirmation below says so
    except PermissionError as exc:
        return out(False, f"{model}: cannot signal pid {victim}: {exc}", pid=victim)
    watch = [victim] + (workers if target == "process" else [])  # a master takes its workers with it (pdeathsig)
    alive = wait_gone(watch, born)
    took_ms = round((time.monotonic() - t0) * 1000, 1)
    facts: dict[str, Any] = {"pid": victim, "gone": victim not in alive, "confirmed_by": "psutil",
                             "took_ms": took_ms, **{k: v for k, v in held.items() if k != "split"}}
    if target == "process" and workers:
        facts["workers_gone"] = [p for p in workers if p not in alive]
    if alive:
        return out(False, f"{model}: sent SIGKILL to pid {victim} but {', '.join(map(str, alive))} still "
                          f"alive after {KILL_CONFIRM_S:g} s", **facts, still_alive=alive)
    what = f"worker {victim}" if target == "worker" else f"pid {victim}" + (
        f" and its {len(workers)} workers" if workers else "")
    msg = f"{model}: killed {what} (SIGKILL) — gone, confirmed after {took_ms:g} ms"
    if target == "worker":  # the master's part of the lesson: the replacement
        deadline = time.monotonic() + RESPAWN_WAIT_S
        while time.monotonic() < deadline:
            new = [p for p in children(server_pid) if p not in workers]
            if len(children(server_pid)) >= len(workers) and new:
                facts["respawned"] = new
                msg += f"; the master respawned it as {', '.join(map(str, new))}"
                break
            time.sleep(0.01)
        else:
            msg += f"; no replacement within {RESPAWN_WAIT_S:g} s"
    return out(True, msg, **facts)


# -- kill -------------------------------------------------------------------------------------------------------
def default_target(model: str) -> str:
    return "worker" if SERVERS[model].master else "process"


def kill(model: str, target: str | None = None, pid: int | str | None = None, *, lab: Lab | None = None,
         by: str = "webmodels kill") -> Outcome:
    """SIGKILL MODEL's whole server (TARGET "process") or one worker ("worker"; PID: that one, "busiest": the one
    with the most user requests in flight now); confirm it is gone."""
    lab = lab or Lab.here()
    target = target or default_target(model)
    if model not in SERVERS:
        return Outcome(False, f"unknown server {model!r} (the lab's: {', '.join(SERVERS)})", "kill", model, lab.where)
    if target == "worker" and not SERVERS[model].master:
        return Outcome(False, f"{model}: the {model} model has no worker processes; kill the process",
                       "kill", model, lab.where, {"target": target})
    server_pid = lab.server_pid(model) if lab.where == "native" else None
    if lab.where == "native":
        if server_pid is None or not serves(server_pid, model):
            entry = ((lab.state() or {}).get("servers") or {}).get(model) or {}
            return Outcome(False, f"{model}: not running (supervisor: {entry.get('state', 'unknown')}) — "
                                  "nothing to kill", "kill", model, "native", {"target": target})
    def read_split() -> list[tuple[int, int]]:  # what a worker's kill costs: logged natively with the event
        return worker_split(stats(lab, model, SPLIT_READ_S))
    if server_pid is not None:
        return kill_pids(model, target, server_pid, pid, via="pid", by=by, log_path=lab.events_path(),
                         where="native", read_split=read_split)
    if pid == "busiest" and target == "worker":  # through Docker or HTTP: chosen here, by the same rule
        if not (split := read_split()):
            return Outcome(False, f"{model}: not answering /_lab/stats — cannot tell its busiest worker", "kill",
                           model, lab.where, {"target": target})
        pid = busiest(split)
    if lab.where == "docker":
        return _kill_docker(model, target, pid, by)
    return _kill_http(lab, model, target, pid, by)


def _kill_http(lab: Lab, model: str, target: str, pid: int | None, by: str) -> Outcome:
    out = lambda ok, msg, **facts: Outcome(ok, msg, "kill", model, "http", {"target": target, **facts})  # noqa: E731
    before = stats(lab, model)
    route = f"/_lab/kill?target={target}" + (f"&pid={pid}" if pid else "")
    reply = request(lab.url(model), "POST", route, 5.0, by)
    if reply.kind != "answered":
        silent = "hung" if reply.kind == "timeout" else "silent"
        return out(False, f"{model}: no answer to POST {route} ({reply.error or reply.kind}); from here (no "
                          f"Docker engine, no view of its pids) nothing else can reach a {silent} server — on the "
                          f"host run: webmodels kill {model}" + (" --worker" if target == "worker" else " --process"),
                   reply=reply.kind)
    if refused := _refusal(model, reply):
        return out(False, refused, status=reply.status)
    victim = int(reply.json().get("pid", 0))
    deadline = time.monotonic() + KILL_CONFIRM_S
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        now = stats(lab, model, 1.0)
        if target == "worker" and now is not None and victim not in {w["pid"] for w in now.get("per_worker", [])}:
            return out(True, f"{model}: killed worker {victim} — gone from the master's workers after "
                             f"{(time.monotonic() - t0) * 1000:.0f} ms ({len(now.get('per_worker', []))} workers now)",
                       pid=victim, gone=True, confirmed_by="/_lab/stats per_worker")
        if target == "process":
            if now is not None and before is not None and now.get("started_at") != before.get("started_at"):
                return out(True, f"{model}: killed pid {victim} — a new process answers now (restarted)",
                           pid=victim, gone=True, confirmed_by="/_lab/stats started_at")
            if now is None and accepts(lab.url(model)) is False:
                return out(True, f"{model}: killed pid {victim} — nothing listens on its port now",
                           pid=victim, gone=True, confirmed_by="refused connect")
        time.sleep(0.05)
    return out(False, f"{model}: the server said it killed pid {victim}, but that could not be confirmed "
                      f"within {KILL_CONFIRM_S:g} s from here", pid=victim, gone=None)


def inspect_container(container: str) -> dict[str, Any] | None:
    """The container's State from `docker inspect`, with its RestartCount (None: Docker cannot say)."""
    res = _docker("inspect", "-f", "{{json .State}} {{.RestartCount}}", container)
    if res is None or res.returncode != 0:
        return None
    state, _, restarts = res.stdout.strip().rpartition(" ")
    try:
        doc = json.loads(state)
    except ValueError:
        return None
    doc["RestartCount"] = int(restarts) if restarts.isdigit() else None
    return doc


def _kill_docker(model: str, target: str, pid: int | None, by: str) -> Outcome:
    out = lambda ok, msg, **facts: Outcome(ok, msg, "kill", model, "docker", {"target": target, **facts})  # noqa: E731
    container = compose_container(model)
    if container is None:
        return out(False, f"{model}: no running compose container (docker ps --filter "
                          f"label=com.docker.compose.service={model})")
    before = inspect_container(container) or {}
    argv = ["exec", container, "python3", "-m", "webmodels.actions", "inside", model, target,
            str(pid or 0), by]
    t0 = time.monotonic()
    res = _docker(*argv, timeout=30)
    inside: dict[str, Any] = {}
    for line in (res.stdout if res else "").splitlines():
        if line.startswith("{"):
            try:
                inside = json.loads(line)
            except ValueError:
                pass
    if target == "worker" or not inside.get("ok"):  # a worker: the code inside confirmed it (psutil, in there)
        if res is None:
            return out(False, f"{model}: `docker exec` did not finish within 30 s", container=container)
        if not inside:
            err = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
            hint = " (rebuild the image: docker compose up --build)" if "No module named" in err[0] else ""
            return out(False, f"{model}: docker exec failed: {err[0]}{hint}", container=container)
        return Outcome(bool(inside["ok"]), inside["message"], "kill", model, "docker",
                       {**inside.get("facts", {}), "container": container})
    # the process: it took the container's init, and the exec with it; confirm from outside
    deadline = time.monotonic() + KILL_CONFIRM_S + 5
    while time.monotonic() < deadline:
        now = inspect_container(container)
        if now is None:
            break
        moved = now.get("StartedAt") != before.get("StartedAt") or now.get("Pid") != before.get("Pid")
        if not now.get("Running") or moved:
            took = (time.monotonic() - t0) * 1000
            then = "Docker restarts it" if now.get("Restarting") or now.get("Running") else "stopped"
            facts = {**inside.get("facts", {}), "container": container, "gone": True,
                     "confirmed_by": "docker inspect", "restart_count": now.get("RestartCount")}
            return out(True, f"{model}: killed pid {facts.get('pid')} in container {container[:12]} — "
                             f"gone (docker inspect: {'restarted' if now.get('Running') else 'not running'}) after "
                             f"{took:.0f} ms; {then}", **facts)
        time.sleep(0.05)
    return out(False, f"{model}: sent SIGKILL inside {container[:12]}, but docker inspect shows the same process "
                      "running", container=container, gone=False)


def _inside(argv: list[str]) -> int:
    """`python -m webmodels.actions inside MODEL TARGET PID BY`: the kill, run inside the server's container."""
    model, target, pid_s, by = argv
    try:
        init_children = children(1)
    except psutil.Error:
        init_children = []
    servers = [p for p in init_children if serves(p, model)]  # never anything else of PID 1's
    if not servers:
        print(json.dumps(Outcome(False, f"{model}: no server process under PID 1 in its container", "kill", model,
                                 "docker", {"target": target}).to_dict()), flush=True)
        return 1
    if target == "process":  # we die with it: say what we do first
        facts = {"target": target, "pid": servers[0], "via": "docker exec"}
        print(json.dumps(Outcome(True, "signal sent", "kill", model, "docker", facts).to_dict()), flush=True)
    result = kill_pids(model, target, servers[0], int(pid_s) or None, via="docker", by=by,
                       log_path=events.path(), where="docker")
    print(json.dumps(result.to_dict()), flush=True)
    return result.exit_code


# -- faults -----------------------------------------------------------------------------------------------------
def _fault_path(kind: str, params: dict[str, Any]) -> str:
    if kind == "hang":
        return f"/fault/hang?s={int(params.get('s', 3600))}"
    if kind == "leak":
        return f"/fault/leak?mb={int(params.get('mb', 10))}"
    return f"/fault/{kind}"


def _process_gone(lab: Lab, model: str, before: dict[str, Any], timeout: float) -> tuple[bool | None, str]:
    """Whether the server process seen in BEFORE is gone, by the strongest means here, and how it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        if lab.where == "native" and before.get("pid"):
            if is_gone(before["pid"], before.get("born")):
                return True, "psutil: pid gone"
        elif lab.where == "docker" and before.get("container"):
            now = inspect_container(before["container"]) or {}
            if not now.get("Running") or now.get("StartedAt") != before.get("StartedAt"):
                return True, "docker inspect: restarted" if now.get("Running") else "docker inspect: not running"
        else:
            now_stats = stats(lab, model, 1.0)
            if now_stats is not None and now_stats.get("started_at") != before.get("started_at"):
                return True, "/_lab/stats: a new process answers"
            if now_stats is None and accepts(lab.url(model)) is False:
                return True, "nothing listens on its port"
        if time.monotonic() >= deadline:
            return None, "not confirmed"
        time.sleep(0.02)


def fault(model: str, kind: str, *, lab: Lab | None = None, by: str = "webmodels", **params: Any) -> Outcome:
    """Fire fault KIND (crash, segfault, hang, leak, raise) at MODEL through its route; confirm what it did."""
    lab = lab or Lab.here()
    out = lambda ok, msg, **facts: Outcome(ok, msg, "fault", model, lab.where, {"kind": kind, **facts})  # noqa: E731
    if kind not in FAULTS:
        return out(False, f"unknown fault {kind!r} (one of {', '.join(FAULTS)})")
    if model not in SERVERS:
        return out(False, f"unknown server {model!r} (the lab's: {', '.join(SERVERS)})")
    before = stats(lab, model)
    if before is None:
        p = probe(model, lab)
        return out(False, f"{model}: not answering before the fault ({p.state}: {p.detail})", state=p.state)
    ident: dict[str, Any] = {"started_at": before.get("started_at")}
    if lab.where == "native":
        ident["pid"] = lab.server_pid(model)
        ident["born"] = _identity(ident["pid"]) if ident["pid"] else None
    elif lab.where == "docker" and (container := compose_container(model)):
        ident.update(inspect_container(container) or {}, container=container)
    path = _fault_path(kind, params)
    master = SERVERS[model].master
    exits_before = sum((before.get("counters", {}).get("worker_exits") or {}).values())
    if kind == "hang":
        reply = request(lab.url(model), "POST", path, HANG_GRACE_S, by)
    else:
        reply = request(lab.url(model), "POST", path, 10.0, by)
    if reply.kind == "answered" and reply.status == 404:
        return out(False, _refusal(model, reply), status=404)
    if kind in ("crash", "segfault"):
        if reply.kind == "answered":
            return out(False, f"{model}: {path} was answered ({reply.status}): the process did not die",
                       status=reply.status)
        if master:  # the worker that served it died; the master counts the exit
            deadline = time.monotonic() + KILL_CONFIRM_S
            while time.monotonic() < deadline:
                now = stats(lab, model, 1.0) or {}
                exits = sum((now.get("counters", {}).get("worker_exits") or {}).values())
                if exits > exits_before:
                    gone = sorted({w["pid"] for w in before.get("per_worker", [])} -
                                  {w["pid"] for w in now.get("per_worker", [])})
                    which = f": pid {', '.join(map(str, gone))}" if gone else ""
                    return out(True, f"{model}: {kind} — a worker died (the master counted its exit{which}); the "
                                     "others serve on",
                               gone=True, workers_gone=gone, confirmed_by="/_lab/stats worker_exits")
                time.sleep(0.02)
            return out(False, f"{model}: {kind} sent, no answer, but no worker exit seen within {KILL_CONFIRM_S:g} s")
        gone, how = _process_gone(lab, model, ident, KILL_CONFIRM_S)
        if gone:
            return out(True, f"{model}: {kind} — the process is gone ({how}); every request it held is lost",
                       gone=True, pid=ident.get("pid") or before.get("pid"), confirmed_by=how)
        return out(False, f"{model}: {kind} sent and unanswered, but the process could not be confirmed gone "
                          "(no answer is not a death)", gone=None, reply=reply.kind)
    if kind == "hang":
        if reply.kind == "answered":
            return out(False, f"{model}: {path} answered ({reply.status}) at once: nothing hung", status=reply.status)
        if reply.kind != "timeout":
            return out(False, f"{model}: {path}: {reply.error or reply.kind}", reply=reply.kind)
        after = stats(lab, model)
        if after is None:
            p = probe(model, lab)
            return out(True, f"{model}: hung — its hang request is unanswered after {HANG_GRACE_S:g} s and "
                             f"/_lab/stats gets no answer either: the whole server is stuck ({p.detail})",
                       hung="server", state=p.state, confirmed_by="unanswered requests")
        busy = after.get("counters", {})
        engine = SERVERS[model].engine
        what = {(True, "sync"): "one worker is blocked", (True, "threads"): "one thread of one worker is blocked",
                (True, "loop"): "one worker's loop is blocked", (False, "threads"): "one thread is blocked"
                }.get((master, engine), "its handler is blocked")
        return out(True, f"{model}: hung — its hang request is unanswered after {HANG_GRACE_S:g} s; {what}, "
                         f"the server still answers (busy threads {busy.get('busy_threads', '?')}, "
                         f"busy workers {busy.get('busy_workers', '-')})",
                   hung="part", confirmed_by="unanswered request, /_lab/stats answers")
    if reply.kind != "answered":
        return out(False, f"{model}: {path}: {reply.error or reply.kind}", reply=reply.kind)
    body = reply.json()
    if kind == "leak" and reply.status == 200:
        return out(True, f"{model}: leaked {body.get('leaked_mb')} MiB in pid {body.get('pid')} "
                         f"({body.get('total_leaked_mb')} MiB kept there so far)", pid=body.get("pid"),
                   total_leaked_mb=body.get("total_leaked_mb"), confirmed_by="the server's answer")
    if kind == "raise" and reply.status == 500:
        return out(True, f"{model}: raise — answered 500 (the exception was caught; the server lives)",
                   status=500, confirmed_by="the server's answer")
    return out(False, f"{model}: {path} answered {reply.status}: {body.get('error', '')}", status=reply.status)


# -- scale ------------------------------------------------------------------------------------------------------
def scale(model: str, delta: int, *, lab: Lab | None = None, by: str = "webmodels scale") -> Outcome:
    """Add (+N) or remove (-N) workers of a master model; confirm the live worker count reaches the target."""
    lab = lab or Lab.here()
    out = lambda ok, msg, **facts: Outcome(ok, msg, "scale", model, lab.where, {"delta": delta, **facts})  # noqa: E731
    if model not in SERVERS or not SERVERS[model].master:
        masters = [m for m, s in SERVERS.items() if s.master]
        return out(False, f"{model}: not a master model; scale applies to {', '.join(masters)}")
    reply = request(lab.url(model), "POST", f"/_lab/scale?delta={delta}", 10.0, by)
    if reply.kind != "answered":
        return out(False, f"{model}: no answer to POST /_lab/scale ({reply.error or reply.kind})", reply=reply.kind)
    if refused := _refusal(model, reply):
        return out(False, refused, status=reply.status)
    want = int(reply.json()["target_workers"])
    deadline, t0, workers = time.monotonic() + SCALE_CONFIRM_S, time.monotonic(), None
    while time.monotonic() < deadline:
        now = stats(lab, model, 1.0)
        if now is not None:
            workers = len(now.get("per_worker", []))
            if workers == want:
                return out(True, f"{model}: {want} workers running (confirmed after "
                                 f"{(time.monotonic() - t0) * 1000:.0f} ms)", target=want, workers=workers,
                           confirmed_by="/_lab/stats per_worker")
        time.sleep(0.05)
    return out(False, f"{model}: target {want} workers, {workers if workers is not None else '?'} running after "
                      f"{SCALE_CONFIRM_S:g} s", target=want, workers=workers)


# -- probe ------------------------------------------------------------------------------------------------------
def probe(model: str, lab: Lab | None = None, timeout: float = STATS_TIMEOUT_S,
          answer: dict[str, Any] | None = None) -> Probe:
    """Say whether MODEL is up, hung or down, and what is known of its process (ANSWER: stats already read)."""
    lab = lab or Lab.here()
    st = answer if answer is not None else stats(lab, model, timeout)
    if st is not None:
        return Probe("up", f"pid {st.get('pid')} answers", st, st.get("pid"), True, True)
    return silence(model, lab, timeout)


def silence(model: str, lab: Lab, waited: float, url: str | None = None) -> Probe:
    """Explain a server that did not answer within WAITED seconds: hung (alive / accepting) or down (gone)."""
    url = url or lab.url(model)
    port = urlsplit(url).port
    tcp = accepts(url)
    if lab.where == "native":
        pid = lab.server_pid(model)
        if pid is not None and serves(pid, model):
            if tcp is False:  # alive, nothing listens: booting (or closing), not hung — a hung one's port accepts
                return Probe("down", f"pid {pid} alive, not listening on :{port} (starting or stopping)", None, pid,
                             True, False)
            return Probe("hung", f"pid {pid} alive, no answer within {waited:g} s", None, pid, True, tcp)
        return Probe("down", "no server process" + ("" if tcp is not False else f"; nothing listens on :{port}"),
                     None, pid, False, tcp)
    if tcp:
        return Probe("hung", f"no answer within {waited:g} s, but its port :{port} accepts connections (the kernel "
                             "queues them; nobody answers)", None, None, None, True)
    if tcp is False:
        return Probe("down", f"nothing listens on :{port} (connection refused)", None, None, None, False)
    return Probe("down", f"no answer and no TCP connect to :{port} within 0.5 s", None, None, None, None)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "inside":
        sys.exit(_inside(sys.argv[2:]))
    print("usage: python -m webmodels.actions inside MODEL worker|process PID BY   (run by `docker exec`)",
          file=sys.stderr)
    sys.exit(2)
