"""`webmodels up`: the lab without Docker — three servers, Locust, and Docker's restart policy in Python.

The thread pool and the event loop are single processes: when one crashes, nothing inside it can bring it
back. In compose, Docker's `restart: unless-stopped` does that; here this supervisor does the same thing
the same way: restart at once, and if the server keeps crashing, back off (100 ms, doubling up to 1 min),
forgetting the back-off once a server has stayed up for 10 s. Each restart is logged with how long the
server was down (from its death to the first accepted connection). The prefork server needs no help for a
dead worker — its master is its supervisor — but if the master itself dies it is restarted the same way.

Every child runs in its own process group, so stopping (Ctrl-C, SIGTERM) reaches the prefork workers and
Locust's worker processes too, and leaves no orphan behind.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from .faults import EXIT_NAMES
from .lab import LAB_PORTS, LOCUST_PORT, URL_ENV, project_root, server_env, server_url
from .log import log

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 60.0
BACKOFF_RESET_AFTER = 10.0  # seconds of uptime after which a crash counts as a first crash again
STOP_GRACE = 10.0


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
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    next_start: float = 0.0  # when a pending restart is due (0 = none pending)
    died_at: float = 0.0
    log_file: object = field(default=None, repr=False)

    def start(self) -> None:
        env = {**os.environ, **self.env, "WEBMODELS_RESTARTS": str(self.restarts)}
        self.proc = subprocess.Popen(self.argv, env=env, start_new_session=True, cwd=project_root())
        self.started = time.monotonic()
        self.next_start = 0.0

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _accepts(port: int) -> bool:
    """True if something accepts a TCP connection on 127.0.0.1:PORT."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait_ready(child: Child, died_at: float, deadline: float = 30.0) -> None:
    """Poll the child's port; log the downtime once it accepts a connection again."""
    assert child.port is not None
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if _accepts(child.port):
            down_ms = (time.monotonic() - died_at) * 1000
            log.info("%s serving again on :%d after %.0f ms down (restart #%d)", child.name, child.port,
                     down_ms, child.restarts)
            return
        time.sleep(0.005)
    log.warning("%s did not accept connections within %.0fs of its restart", child.name, deadline)


class Supervisor:
    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def run(self) -> int:
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)  # the wakeup fd carries the signal numbers
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for child in self.children:
            child.start()
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
                continue
            if uptime >= BACKOFF_RESET_AFTER:
                child.backoff = 0.0
            delay = child.backoff
            child.backoff = BACKOFF_FIRST if not child.backoff else min(BACKOFF_MAX, child.backoff * 2)
            child.died_at = now
            child.next_start = now + delay
            log.warning("%s died after %.1fs up (%s); restarting %s", child.name, uptime,
                        describe_status(status), "now" if not delay else f"in {delay:.1f}s (back-off)")

    def _start_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.next_start and now >= child.next_start and not self.stopping:
                child.restarts += 1
                child.start()
                if child.port:
                    threading.Thread(target=_wait_ready, args=(child, child.died_at), daemon=True).start()

    def stop_all(self) -> None:
        live = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in live:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in live:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs: SIGKILL", child.name, STOP_GRACE)
        for child in self.children:
            child.signal_group(signal.SIGKILL)  # whatever is left in any group: workers, locust workers
            if child.proc is not None:
                try:
                    child.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        log.info("lab stopped")


def lab_children(locust: bool = True, locust_args: list[str] | None = None, offset: int = 0) -> list[Child]:
    py = sys.executable
    children = [Child(model, [py, "-m", "webmodels.cli", "serve", model], server_env(model, offset=offset),
                      port=port + offset) for model, port in LAB_PORTS.items()]
    if locust:
        locust_bin = os.path.join(os.path.dirname(py), "locust")
        argv = [locust_bin if os.path.exists(locust_bin) else "locust", "-f",
                str(project_root() / "loadtest" / "locustfile.py"), "--class-picker",
                "--users", "30", "--spawn-rate", "10",  # form defaults: a multiple of 3, one third each
                "--web-host", "127.0.0.1", "--web-port", str(LOCUST_PORT + offset), *(locust_args or [])]
        env = {URL_ENV[m]: server_url(m, offset=offset) for m in LAB_PORTS}
        children.append(Child("locust", argv, env, port=LOCUST_PORT + offset))
    return children


WELCOME = """
  webmodels lab is up.
    Locust UI      http://127.0.0.1:{lp}   (tab "Servers" shows the three models live)
    thread pool    http://127.0.0.1:8001
    prefork        http://127.0.0.1:8002
    event loop     http://127.0.0.1:8003

  Try first:
    1. In Locust pick all three user classes, 30 users, workload "io", Start.
    2. Crash a prefork worker, then the event loop, and watch the Servers tab:
         webmodels kill prefork --worker
         curl http://127.0.0.1:8003/fault/crash
    3. webmodels status      (memory: RSS vs USS vs PSS per model)
  Ctrl-C stops everything.
"""


def up(locust: bool = True, locust_args: list[str] | None = None, offset: int = 0, metrics: bool = False) -> int:
    ports = {m: p + offset for m, p in LAB_PORTS.items()}
    if locust:
        ports["locust"] = LOCUST_PORT + offset
    extra = []
    if metrics:  # Prometheus scraping the servers (webmodels.promlab owns the details)
        from .promlab import native_child
        extra.append(native_child({m: p + offset for m, p in LAB_PORTS.items()}, offset))
        ports["prometheus"] = extra[-1].port
    check_ports_free(ports)
    sup = Supervisor(lab_children(locust, locust_args, offset) + extra)
    threading.Thread(target=_announce, args=(sup, locust, offset), daemon=True).start()
    return sup.run()


def _announce(sup: Supervisor, locust: bool, offset: int) -> None:
    """Print the URLs once everything accepts connections (or say what did not)."""
    end = time.monotonic() + 30
    pending = {c.name: c.port for c in sup.children if c.port}
    while pending and time.monotonic() < end and not sup.stopping:
        pending = {name: port for name, port in pending.items() if not _accepts(port)}
        time.sleep(0.1)
    if pending:
        log.warning("not answering after 30 s: %s", ", ".join(pending))
    elif not sup.stopping:
        text = WELCOME.format(lp=LOCUST_PORT)
        for port in (*LAB_PORTS.values(), LOCUST_PORT):
            text = text.replace(f":{port}", f":{port + offset}")
        if any(c.name == "prometheus" for c in sup.children):
            port = next(c.port for c in sup.children if c.name == "prometheus")
            text = text.replace("\n  Try first", f"    Prometheus     http://127.0.0.1:{port}   (every server's /metrics, "
                                "1 s scrapes)\n\n  Try first", 1)
        print(text if locust else text.split("Try first")[0], flush=True)
