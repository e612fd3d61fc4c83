"""Start a process in its own session, read what it prints, learn when it listens, stop it and its group.

Three launchers use this: the tests' `Server` (tests/support/servers.py), the bench's `BenchServer` (restarted at once
when it dies) and the native lab's supervisor (`webmodels up`: Docker's back-off, a state file). What differs
between them is policy — when to restart, how long to wait, what to record — and stays with them. How a
process is started, watched and stopped is the same for all three and lives here once, so a fix lands in all
of them (a pipe left open per restart, a worker left holding a port, a start-up failure noticed only at the
deadline).

- Own session (`start_new_session`): the process leads its own process group, so one `killpg` reaches every
  worker a master forked, and a stop can sweep whatever a dead master left behind. A terminal's Ctrl-C
  reaches the launcher, which stops its children in order, instead of every process at once.
- Output: stdout and stderr merged, read by one thread into `lines`, bounded to the latest MAX_LINES (a bench
  server restarted a thousand times, a long soak): the last lines are the ones an error message quotes.
- Readiness: a server prints one start-up line (listen.log_startup) whose address — the real port when it
  bound port 0 — listen.LISTEN_RE reads. A process whose output we do not read (the lab's children print to
  the terminal; Locust, Prometheus) is ready when its port accepts a connection.
- Stop: a signal, a deadline, then SIGKILL — by PID and process group, never by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Mapping, Sequence

from .listen import LISTEN_RE

MAX_LINES = 5000
KILL_WAIT = 5.0  # after SIGKILL, how long to wait for the exit status (the kernel's part: normally instant)

# How "the port is taken" reads in a server's log (listen.PortInUse), in Python's errors, in other tools'.
ADDR_IN_USE = ("address already in use", "eaddrinuse", "errno 98", "already in use")


def addr_in_use(text: str) -> bool:
    """True if TEXT (an exception, a process's output) says a port was taken."""
    text = text.lower()
    return any(marker in text for marker in ADDR_IN_USE)


def serve_argv(model: str, *flags: str, bind: str | None = "127.0.0.1:0", faults: bool = True) -> list[str]:
    """The command line of `webmodels serve MODEL`: BIND (None: the model's own, e.g. from the lab's env), FLAGS.

    `python -m` with this interpreter rather than the `webmodels` script: the child runs the same venv and
    the same code as its launcher, whatever PATH says.
    """
    argv = [sys.executable, "-m", "webmodels.cli", "serve", model]
    if bind is not None:
        argv += ["--bind", bind]
    argv += flags
    if faults:
        argv.append("--faults")
    return argv


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without WEBMODELS_* settings, plus EXTRA: only the launcher's flags configure a server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMODELS_")}
    env.update(extra or {})
    return env


def accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """True if something accepts a TCP connection on HOST:PORT."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_accepting(port: int, timeout: float, *, host: str = "127.0.0.1", interval: float = 0.005,
                   cancelled: Callable[[], bool] = lambda: False) -> bool:
    """Poll HOST:PORT until it accepts a connection (True); False if CANCELLED() turns true or TIMEOUT passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cancelled():
        if accepts(port, host):
            return True
        time.sleep(interval)
    return False


def send(proc: subprocess.Popen, sig: int, group: bool = False) -> None:
    """Send SIG to PROC, or (GROUP) to its process group; a process or group already gone is not an error."""
    try:
        if group:
            os.killpg(proc.pid, sig)  # started in its own session: the group id is its pid
        else:
            proc.send_signal(sig)  # does nothing once PROC is reaped: its pid may belong to someone else by then
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(procs: Sequence[subprocess.Popen], timeout: float = 10.0, sig: int = signal.SIGTERM, *,
             group: bool = False, sweep: bool = False) -> list[subprocess.Popen]:
    """SIG to each of PROCS still running (GROUP: to its whole group), give them TIMEOUT together, then SIGKILL
    what is left; return those that had not exited within TIMEOUT.

    Together, so stopping N processes takes one TIMEOUT, not N. SWEEP (implied by GROUP; only for processes
    that lead their own session, as Process does): the SIGKILL goes to each group even when its leader exited
    in time — a worker it left behind would keep the port.
    """
    running = [p for p in procs if p.poll() is None]
    for p in running:
        send(p, sig, group)
    deadline = time.monotonic() + timeout
    late = []
    for p in running:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            late.append(p)
    for p in procs:
        if group or sweep:
            send(p, signal.SIGKILL, group=True)
        elif p.poll() is None:
            send(p, signal.SIGKILL)
        try:
            p.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            pass  # unkillable (uninterruptible sleep): its status stays unknown
    return late


def stop(proc: subprocess.Popen, timeout: float = 10.0, sig: int = signal.SIGTERM, *, group: bool = False,
         sweep: bool = False) -> int | None:
    """stop_all() for one process; its exit status (None: not reaped even after SIGKILL)."""
    stop_all([proc], timeout, sig, group=group, sweep=sweep)
    return proc.returncode


class Process(subprocess.Popen):
    """A child process in its own session; with CAPTURE, its output read into `lines` and its address learned.

    A Popen (poll, wait, pid, returncode all work), so code written for one keeps working.
    """

    def __init__(self, argv: list[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 capture: bool = True, max_lines: int = MAX_LINES) -> None:
        # errors="replace": one undecodable byte in a log must not end the reader (and with it the readiness)
        super().__init__(argv, stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.STDOUT if capture else None, text=True, errors="replace", bufsize=1,
                         env=env, cwd=cwd, start_new_session=True)
        self.lines: list[str] = []
        self.max_lines = max_lines
        self.address = ""  # host:port from the first start-up line
        # Set at the start-up line or at the end of the output (it exited, or closed it): whichever comes
        # first. A server that fails at start is noticed at once, not at the deadline.
        self._settled = threading.Event()
        if capture:
            threading.Thread(target=self._read, name=f"read-{self.pid}", daemon=True).start()

    def _read(self) -> None:
        assert self.stdout is not None
        with self.stdout:  # closed at EOF: a server restarted a thousand times must not leak a pipe each time
            for line in self.stdout:
                self.lines.append(line.rstrip("\n"))
                if len(self.lines) > self.max_lines:
                    del self.lines[0]
                if not self.address and (m := LISTEN_RE.search(line)):
                    self.address = m.group(1)
                    self._settled.set()
        self._settled.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1]) if self.address else 0

    def alive(self) -> bool:
        return self.poll() is None

    def wait_listening(self, timeout: float) -> bool:
        """Wait for the start-up line: True once it is printed, False if the output ends first or TIMEOUT passes."""
        self._settled.wait(timeout)
        return bool(self.address)

    def wait_accepting(self, port: int, timeout: float, *, host: str = "127.0.0.1", interval: float = 0.005,
                       cancelled: Callable[[], bool] = lambda: False) -> bool:
        """wait_accepting(), also False as soon as this process exits."""
        return wait_accepting(port, timeout, host=host, interval=interval,
                              cancelled=lambda: cancelled() or self.poll() is not None)

    def signal_group(self, sig: int) -> None:
        """SIG to every process of this one's group (its workers too)."""
        send(self, sig, group=True)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM, *, group: bool = False) -> int | None:
        """SIG to this process (GROUP: to its whole group), wait up to TIMEOUT, then SIGKILL what is left of
        the group; the exit status."""
        return stop(self, timeout, sig, group=group, sweep=True)
