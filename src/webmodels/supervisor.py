"""`webmodels up`: the lab without Docker — five servers, Locust, and Docker's restart policy in Python.

The thread pool and the event loop are single processes: when one crashes, nothing inside it can bring it
back. In compose, Docker's `restart: unless-stopped` does that; here this supervisor does the same thing
the same way, back-off included: wait 100 ms before the first restart, double the wait after every crash
(up to 1 min), and forget it once a server has stayed up for 10 s (moby's restartmanager does exactly
this). Each restart is logged with how long the server was dead (from its exit to the first accepted
connection: the "dead" part of the downtime, in the lab's words — see loadtest/accounting.py) and how much of
that was the back-off. The master models (prefork and the two hybrids) need no
help for a dead worker — their master is their supervisor — but a dead master is restarted the same way.

The back-off is the supervisor's policy, not the model's cost: under a crash every 6 s the waits grow to
3.2 s, 6.4 s, 12.8 s while the model itself starts in a fraction of a second. So the supervisor shows it:
  - `--restart-delay S` replaces the back-off with a fixed wait of S seconds (0 = at once);
  - its state goes to a small JSON file, rewritten (atomically) at every change and removed at exit:
    lab.supervisor_state_path(offset), e.g. /tmp/webmodels-up-<uid>-8089.json, also handed to Locust as
    WEBMODELS_SUPERVISOR_STATE. Per server: state (starting / up / waiting / stopped), pid, restarts, the
    policy, `restart_at` while it waits, and the recent restarts as {died_at, started_at, ready_at, delay_s}
    (epoch seconds). The Servers tab turns it into "down — restart in 6.4 s (back-off)", the fault
    accounting into its "back-off" column, `webmodels status` into its state column.
    A file, not an endpoint: no port to choose or free, no thread to serve it, readable after the fact,
    and a reader can tell a stale one (its supervisor_pid is gone).
For short tests, WEBMODELS_BACKOFF_FIRST (seconds, default 0.1) and WEBMODELS_BACKOFF_RESET_AFTER (seconds
of uptime, default 10) change the back-off's first wait and its reset period.

Every child runs in its own process group, so stopping (Ctrl-C, SIGTERM) reaches the master models' workers
and Locust's worker processes too, and leaves no orphan behind.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import promlab
from .exitcodes import EXIT_NAMES
from .launch import Process, accepts, serve_argv, stop_all
from . import pathlink
from .events import ENV as EVENTS_ENV
from .lab import (LAB_PORTS, LOCUST_PORT, SERVERS, URL_ENV, events_path, project_root, read_env_file, server_env,
                  server_url, supervisor_state_path)
from .log import log

BACKOFF_FIRST = 0.1  # Docker's defaultTimeout
BACKOFF_MAX = 60.0  # Docker's maxRestartTimeout
BACKOFF_RESET_AFTER = 10.0  # seconds of uptime after which a crash counts as a first crash again
STOP_GRACE = 10.0
HISTORY = 50  # restarts kept per server in the state file


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}: expected seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name}: expected seconds >= 0, got {raw!r}")
    return value


@dataclass
class RestartPolicy:
    """How long to wait before restarting a server that died after UPTIME seconds.

    Docker's back-off by default; `fixed` (from --restart-delay) waits the same time after every crash.
    """

    fixed: float | None = None
    first: float = BACKOFF_FIRST
    reset_after: float = BACKOFF_RESET_AFTER
    cap: float = BACKOFF_MAX

    @classmethod
    def from_env(cls, fixed: float | None = None) -> "RestartPolicy":
        return cls(fixed=fixed, first=_env_seconds("WEBMODELS_BACKOFF_FIRST", BACKOFF_FIRST),
                   reset_after=_env_seconds("WEBMODELS_BACKOFF_RESET_AFTER", BACKOFF_RESET_AFTER))

    @property
    def name(self) -> str:
        return "back-off" if self.fixed is None else "fixed delay"

    def next_delay(self, previous: float, uptime: float) -> float:
        """The wait before this restart, given the previous wait (0 = none yet) and how long the server ran."""
        if self.fixed is not None:
            return self.fixed
        if uptime >= self.reset_after:
            previous = 0.0
        return min(self.cap, self.first if not previous else previous * 2)

    def describe(self) -> str:
        if self.fixed is not None:
            return f"fixed delay of {self.fixed:g} s"
        return (f"Docker's back-off: {self.first:g} s doubling to {self.cap:g} s, reset after "
                f"{self.reset_after:g} s up")


class PortBusy(RuntimeError):
    pass


def check_ports_free(ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Fail with a message naming every busy port, before anything is started."""
    busy = []
    for name, port in ports.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                busy.append(f"{port} ({name})")
    if busy:
        raise PortBusy(f"port {', '.join(busy)} already in use on {host}: is the lab (or `docker compose "
                       "up`) already running? Stop it, or free the port (`ss -ltnp` shows who holds it).")


def describe_status(status: int) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status} ({EXIT_NAMES.get(status, 'error')})"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int | None = None  # when set, readiness = the port accepts connections
    restart: bool = True
    proc: Process | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    next_start: float = 0.0  # when a pending restart is due (0 = none pending)
    died_at: float = 0.0
    state: str = "starting"  # starting → up → waiting (for its restart) → starting …; stopped: not restarted
    last_exit: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)  # recent restarts, epoch seconds

    def start(self) -> None:
        # Not a clean environment: the lab's servers take the user's WEBMODELS_* settings, then the lab's own.
        # Output not captured: the children write to the lab's terminal, so readiness is by port.
        env = {**os.environ, **self.env, "WEBMODELS_RESTARTS": str(self.restarts)}
        self.proc = Process(self.argv, env=env, cwd=project_root(), capture=False)
        self.started = time.monotonic()
        self.next_start = 0.0
        self.state = "starting"

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.signal_group(sig)


class Supervisor:
    def __init__(self, children: list[Child], policy: RestartPolicy | None = None,
                 state_path: Path | None = None, events: Path | None = None) -> None:
        self.children = children
        self.policy = policy or RestartPolicy()
        self.state_path = state_path
        self.events = events  # the lab's event log (webmodels.events), named in the state file for its readers
        self.state_lock = threading.Lock()
        # Recorded times are epoch seconds for other processes to read, all from the monotonic clock and one
        # offset, so a recorded wait is exactly the wait (time.time() read separately can step or lag).
        self.epoch_offset = time.time() - time.monotonic()
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def run(self) -> int:
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the signal numbers
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        log.info("restart policy: %s", self.policy.describe())
        for child in self.children:
            child.start()
            if child.port:
                self._watch_ready(child, None)
        self.write_state()
        try:
            while not self.stopping:
                self._wait(self._next_timeout())
                self._reap()
                self._start_due()
        finally:
            self.stop_all()
        return 0

    def _next_timeout(self) -> float:
        due = [c.next_start for c in self.children if c.next_start]
        return max(0.0, min(due) - time.monotonic()) if due else 1.0

    def _wait(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self.wake_r], [], [], timeout)
        except InterruptedError:
            return
        if not ready:
            return
        try:
            while data := os.read(self.wake_r, 256):
                for signum in data:
                    if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                        log.info("%s: stopping the lab", signal.Signals(signum).name)
                        self.stopping = True
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        now = time.monotonic()
        changed = False
        for child in self.children:
            if child.proc is None or child.next_start or child.proc.poll() is None:
                continue
            status = child.proc.returncode
            uptime = now - child.started
            if self.stopping:
                continue
            # A child that leaves its group behind (prefork workers outlive nothing: pdeathsig) — still
            # sweep the group so a port is never held by an orphan.
            child.signal_group(signal.SIGKILL)
            if not child.restart:
                log.error("%s exited (%s); it is not restarted — stop with Ctrl-C", child.name,
                          describe_status(status))
                child.proc = None
                child.state, child.last_exit, changed = "stopped", describe_status(status), True
                continue
            delay = self.policy.next_delay(child.backoff, uptime)
            child.backoff = delay
            child.died_at = now
            child.next_start = now + delay
            child.state = "waiting"
            child.last_exit = describe_status(status)
            wall = self.wall(now)
            child.history = [*child.history, {"died_at": wall, "restart_at": wall + delay, "delay_s": delay,
                                              "policy": self.policy.name, "exit": child.last_exit,
                                              "uptime_s": round(uptime, 3), "started_at": None,
                                              "ready_at": None}][-HISTORY:]
            log.warning("%s died after %.1fs up (%s); restarting %s", child.name, uptime, child.last_exit,
                        "now" if not delay else f"in {delay:.1f}s ({self.policy.name})")
            changed = True
        if changed:
            self.write_state()

    def _start_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.next_start and now >= child.next_start and not self.stopping:
                child.restarts += 1
                record = child.history[-1] if child.history else None
                if record is not None:
                    record["started_at"] = self.wall(now)  # the wait ends here; fork/exec is the start's cost
                child.start()
                self.write_state()
                if child.port:
                    self._watch_ready(child, record)

    def _watch_ready(self, child: Child, record: dict[str, Any] | None) -> None:
        """Poll the child's port in a thread; mark it up (and log the downtime of a restart) once it accepts."""
        threading.Thread(target=self._wait_ready, args=(child, child.proc, record), daemon=True).start()

    def _wait_ready(self, child: Child, proc: Process | None, record: dict[str, Any] | None,
                    deadline: float = 30.0) -> None:
        assert child.port is not None and proc is not None
        if not proc.wait_accepting(child.port, deadline, cancelled=lambda: self.stopping or child.proc is not proc):
            if not self.stopping and child.proc is proc and proc.poll() is None:  # not: died or replaced meanwhile
                log.warning("%s did not accept connections within %.0fs of its start", child.name, deadline)
            return
        with self.state_lock:
            if child.proc is not proc:
                return
            child.state = "up"
            if record is not None:
                record["ready_at"] = self.wall(time.monotonic())
        if record is not None:
            # "dead", the lab's word for this part of the downtime (loadtest/accounting.py): from the exit to
            # accepting again. Users may have seen it down for longer: a hang before a kill is not dead time.
            dead_ms = (record["ready_at"] - record["died_at"]) * 1000
            start_ms = (record["ready_at"] - record["started_at"]) * 1000
            log.info("%s serving again on :%d after %.0f ms dead (from its exit to accepting; restart #%d: %s "
                     "%.0f ms + start %.0f ms)", child.name, child.port, dead_ms, child.restarts, self.policy.name,
                     (record["started_at"] - record["died_at"]) * 1000, start_ms)
        self.write_state()

    def wall(self, mono: float) -> float:
        """Epoch seconds of a monotonic time."""
        return mono + self.epoch_offset

    def state(self) -> dict[str, Any]:
        """The supervisor's view of its children, as written to the state file."""
        servers = {}
        for c in self.children:
            restart_at = None
            if c.next_start:
                restart_at = self.wall(c.next_start)
            servers[c.name] = {"state": c.state, "pid": c.proc.pid if c.proc else None, "port": c.port,
                               "restarts": c.restarts, "restart_at": restart_at,
                               "delay_s": c.backoff if c.next_start else None, "last_exit": c.last_exit or None,
                               "history": list(c.history)}
        return {"supervisor_pid": os.getpid(), "updated_at": time.time(), "policy": self.policy.name,
                "policy_text": self.policy.describe(), "events": str(self.events) if self.events else None,
                "servers": servers}

    def write_state(self) -> None:
        """Replace the state file atomically (readers never see half a file)."""
        if self.state_path is None:
            return
        with self.state_lock:
            try:
                doc = self.state()
                tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, self.state_path)
            except (OSError, RuntimeError) as exc:  # RuntimeError: a dict changed size under the thread
                log.debug("state file %s not written: %s", self.state_path, exc)

    def stop_all(self) -> None:
        # SIGTERM to every group at once (the master models' workers, Locust's workers), one STOP_GRACE for all,
        # then SIGKILL whatever is left in any group
        late = stop_all([c.proc for c in self.children if c.proc is not None], STOP_GRACE, group=True)
        for child in self.children:
            if child.proc is not None and child.proc in late:
                log.warning("%s did not stop within %.0fs: SIGKILL", child.name, STOP_GRACE)
        for path in (self.state_path, self.events):  # a lab leaves nothing behind in /tmp
            if path is not None:
                try:
                    path.unlink()
                except OSError:
                    pass
        log.info("lab stopped")


def lab_children(locust: bool = True, locust_args: list[str] | None = None, offset: int = 0,
                 state_path: Path | None = None, events: Path | None = None) -> list[Child]:
    py = sys.executable
    log_env = {EVENTS_ENV: str(events)} if events is not None else {}  # every fault recorded, whoever fires it
    # bind and faults come from the lab's env files (server_env), as in compose
    children = [Child(model, serve_argv(model, bind=None, faults=False),
                      {**server_env(model, offset=offset), **log_env}, port=port + offset)
                for model, port in LAB_PORTS.items()]
    if locust:
        locust_bin = os.path.join(os.path.dirname(py), "locust")
        argv = [locust_bin if os.path.exists(locust_bin) else "locust", "-f",
                str(project_root() / "loadtest" / "locustfile.py"), "--class-picker",
                "--users", "30", "--spawn-rate", "10",  # form defaults: a multiple of 5, one fifth each
                "--web-host", "127.0.0.1", "--web-port", str(LOCUST_PORT + offset), *(locust_args or [])]
        env = {**{URL_ENV[m]: server_url(m, offset=offset) for m in LAB_PORTS}, **log_env}
        if state_path is not None:
            env["WEBMODELS_SUPERVISOR_STATE"] = str(state_path)  # the Servers tab shows restarts waiting
        children.append(Child("locust", argv, env, port=LOCUST_PORT + offset))
    return children


def shape(model: str) -> str:
    """Say what a server's processes are, from its lab/<model>.env: "(2 worker processes × 16 threads)"."""
    env = read_env_file(project_root() / SERVERS[model].env_file)
    server = SERVERS[model]
    if not server.master:
        return f"({env['WEBMODELS_THREADS']} threads)" if "WEBMODELS_THREADS" in env else ""
    workers = f"{env.get('WEBMODELS_WORKERS', '?')} worker processes"
    each = {"threads": f" × {env.get('WEBMODELS_THREADS', '?')} threads", "loop": " × an event loop"}
    return f"({workers}{each.get(server.engine, '')})"


def welcome(offset: int, policy: str, locust: bool = True, events: Path | None = None) -> str:
    """The banner `webmodels up` prints once everything answers; every command in it works as printed."""
    flag = f" --port-offset {offset}" if offset else ""  # the commands must reach *this* lab
    lines = ["", "  webmodels lab is up."]
    if locust:
        lines.append(f"    {'Locust UI':15} http://127.0.0.1:{LOCUST_PORT + offset}   (tab \"Servers\" shows the "
                     f"{len(SERVERS)} servers live)")
    for name, server in SERVERS.items():
        lines.append(f"    {server.label:15} {server_url(name, offset=offset)}   {shape(name)}".rstrip())
    lines.append(f"    {'restarts':15} {policy}")
    if events is not None:
        lines.append(f"    {'event log':15} {events}   (every fault and kill, whoever started it)")
    if locust:
        masters = [n for n, sv in SERVERS.items() if sv.master]
        lines += ["", "  Try first (in another terminal):",
                  f"    1. In Locust pick all {len(SERVERS)} user classes, {6 * len(SERVERS)} users, workload \"io\", "
                  "Start.",
                  f"    2. Crash a {masters[0]} worker, then the {SERVERS['eventloop'].label}, and watch the "
                  "Servers tab:",
                  f"         webmodels kill {masters[0]} --worker{flag}",
                  f"         curl {server_url('eventloop', offset=offset)}/fault/crash",
                  f"    3. webmodels status{flag}      (memory: RSS vs USS vs PSS per model)"]
    if locust and (note := pathlink.hint()):
        lines.append("  " + note)
    lines += ["  Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def up(locust: bool = True, locust_args: list[str] | None = None, offset: int = 0,
       policy: RestartPolicy | None = None, metrics: bool = False) -> int:
    ports = {m: p + offset for m, p in LAB_PORTS.items()}
    if locust:
        ports["locust"] = LOCUST_PORT + offset
    extra = []
    if metrics:  # Prometheus scraping the servers (webmodels.promlab owns the details)
        prom_argv, ports["prometheus"] = promlab.native({m: p + offset for m, p in LAB_PORTS.items()}, offset)
        extra.append(Child("prometheus", prom_argv, {}, port=ports["prometheus"]))
    check_ports_free(ports)
    policy = policy or RestartPolicy()
    state_path = supervisor_state_path(offset)
    log_path = events_path(offset)
    try:
        log_path.write_bytes(b"")  # a new lab, a new log (removed when the lab stops, with the state file)
    except OSError as exc:
        log.warning("no event log at %s (%s): faults started by hand will not be counted", log_path, exc)
        log_path = None
    sup = Supervisor(lab_children(locust, locust_args, offset, state_path, log_path) + extra, policy, state_path,
                     log_path)
    threading.Thread(target=_announce, args=(sup, locust, offset), daemon=True).start()
    return sup.run()


def _announce(sup: Supervisor, locust: bool, offset: int) -> None:
    """Print the URLs once everything accepts connections (or say what did not)."""
    end = time.monotonic() + 30
    pending = {c.name: c.port for c in sup.children if c.port}
    while pending and time.monotonic() < end and not sup.stopping:
        pending = {name: port for name, port in pending.items() if not accepts(port)}
        time.sleep(0.1)
    if pending:
        log.warning("not answering after 30 s: %s", ", ".join(pending))
    elif not sup.stopping:
        text = welcome(offset, sup.policy.describe(), locust, sup.events)
        if any(c.name == "prometheus" for c in sup.children):
            port = next(c.port for c in sup.children if c.name == "prometheus")
            text = text.replace("\n\n  Try first", f"\n    {'Prometheus':15} http://127.0.0.1:{port}   (every server's "
                                "/metrics, 1 s scrapes)\n\n  Try first", 1)
        print(text, flush=True)
