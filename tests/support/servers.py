"""Start real servers as subprocesses on loopback port 0 (the port is read from their start-up line), stop them by
PID; read what they say about themselves (/_lab/stats, their log); clients that run beside a test."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

import httpx

from webmodels import launch
from webmodels.config import MASTER_MODELS

from .processes import Said, wait_for

BOOT_FAULTS = {"WEBMODELS_FAULT_BOOT_DELAY", "WEBMODELS_FAULT_BOOT"}  # a test that times the boot itself
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")  # webmodels.log's timestamp


class Server(Said):
    """One `webmodels serve` subprocess on 127.0.0.1:<the port it bound>, in its own session (launch.Process)."""

    def __init__(self, model: str, *args: str, env: dict[str, str] | None = None, faults: bool = True,
                 booted: bool = True) -> None:
        """BOOTED: for a master model, return once every worker has booted (False: at the start-up line)."""
        self.model = model
        self.proc = launch.Process(launch.serve_argv(model, *args, faults=faults), env=launch.clean_env(env))
        self.pid = self.proc.pid
        if not self.proc.wait_listening(20):
            self.kill()
            raise AssertionError(f"{model} did not start:\n{self.log}")
        self.address, self.host, self.port = self.proc.address, self.proc.host, self.proc.port
        self.url = f"http://{self.address}"
        if booted and model in MASTER_MODELS and not BOOT_FAULTS & set(env or {}):
            # "listening" comes from the master before its workers boot (a gevent worker patches for ~0.15 s):
            # a test times its client's actions from a server that serves, not from one still booting.
            wait_for(self._booted, timeout=20, what=f"{model}'s workers booted")

    def _booted(self) -> bool:
        workers = self.stats()["per_worker"]
        return bool(workers) and all(w["booted"] for w in workers)

    # -- what it says -----------------------------------------------------------------------------------------------
    def said(self, text: str, timeout: float = 5.0) -> str:
        """Wait until a line of the log contains TEXT (the reader thread may still be draining the pipe); the line."""
        return wait_for(lambda: next((ln for ln in self.lines if text in ln), None), timeout=timeout,
                        what=f"the log line {text!r}")

    def log_time(self, text: str, timeout: float = 5.0) -> float:
        """The server's own clock (epoch seconds) at its first log line containing TEXT."""
        return log_time_of(self.said(text, timeout))

    def client(self, **kw: object) -> httpx.Client:
        kw.setdefault("timeout", 10.0)
        return httpx.Client(base_url=self.url, **kw)  # type: ignore[arg-type]

    def get(self, path: str, **kw: object) -> httpx.Response:
        with self.client() as c:
            return c.get(path, **kw)  # type: ignore[arg-type]

    def stats(self) -> dict:
        return self.get("/_lab/stats").json()

    def counters(self) -> dict:
        return self.stats()["counters"]

    def in_flight(self) -> int:
        """Requests in flight but this look itself (the stats request is in flight while it is answered)."""
        return self.counters()["in_flight"] - 1

    def per_worker(self) -> dict[int, dict]:
        """The shared-memory board's row of each worker (one row, the process itself, when there is no master)."""
        return {row["pid"]: row for row in self.stats()["per_worker"]}

    def worker_pids(self) -> set[int]:
        return {p["pid"] for p in self.stats()["processes"] if p["role"] == "worker"}

    def workers_become(self, n: int, timeout: float = 10.0, exclude: set[int] = frozenset()) -> set[int]:
        """Wait until the master has exactly N live workers, none of them in EXCLUDE; their pids."""
        def ready() -> set[int] | None:
            stats = self.stats()
            pids = {p["pid"] for p in stats["processes"] if p["role"] == "worker"}
            return pids if len(pids) == n and not pids & exclude and stats["counters"]["workers"] == n else None
        return wait_for(ready, timeout=timeout, interval=0.05, what=f"{n} workers (excluding {sorted(exclude)})")

    # -- what is done to it --------------------------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc.alive()

    def signal(self, sig: int) -> None:
        """SIG to the server's own process (a master, not its workers): what the test is about."""
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the server's own graceful stop), then SIGKILL after TIMEOUT; either way, sweep its group."""
        return self.proc.stop(timeout)

    def kill(self) -> None:
        self.proc.stop(10, signal.SIGKILL, group=True)


def log_time_of(line: str) -> float:
    """The timestamp of a log LINE, in epoch seconds."""
    stamp = STAMP.match(line)
    assert stamp, line
    return time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")) + int(stamp.group(2)) / 1000


class Background:
    """GET TARGET in a thread (a connection of its own); keep the status code or the exception."""

    def __init__(self, srv: Server, target: str, timeout: float = 20.0) -> None:
        self.status: int | None = None
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(srv.url + target, timeout), daemon=True)
        self.thread.start()

    def _run(self, url: str, timeout: float) -> None:
        try:
            self.response = httpx.get(url, timeout=timeout)
            self.status = self.response.status_code
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self, timeout: float = 20.0) -> int | None:
        """Wait for the answer; its status (None: no answer, see `error`)."""
        self.thread.join(timeout)
        assert self.done, "the background request did not finish"
        return self.status


class FreshClients:
    """N threads looping: connect, wait PAUSE, send `GET PATH` with `Connection: close`, read the status line.

    Each established connection is one request: `results` holds (connected at, answered 200). A refused
    connect sent nothing and is not a request: it is counted in `refused` and retried after 10 ms (or, with
    stop_on_refused, ends that client: the listener is gone for good). Used by the "nothing established
    before a stop is lost" claims of every engine.
    """

    def __init__(self, srv: Server, n: int, path: str = "/io?ms=100", pause: float = 0.0,
                 stop_on_refused: bool = False) -> None:
        self.srv, self.path, self.pause, self.stop_on_refused = srv, path, pause, stop_on_refused
        self.results: list[tuple[float, bool]] = []
        self.refused = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(n)]
        for t in self._threads:
            t.start()

    def _client(self) -> None:
        request = b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % self.path.encode()
        while not self._stop.is_set():
            try:
                s = socket.create_connection((self.srv.host, self.srv.port), timeout=15)
            except OSError:
                with self._lock:
                    self.refused += 1
                if self.stop_on_refused:
                    return
                time.sleep(0.01)
                continue
            connected, ok = time.monotonic(), False
            with s:
                try:
                    if self.pause:
                        time.sleep(self.pause)
                    s.sendall(request)
                    ok = s.recv(100).startswith(b"HTTP/1.1 200")
                except OSError:
                    pass
            with self._lock:
                self.results.append((connected, ok))

    def stop(self) -> "FreshClients":
        """Stop looping and wait for every client's last request."""
        self._stop.set()
        for t in self._threads:
            t.join(20)
        return self

    def answered(self, before: float = float("inf")) -> list[bool]:
        """Answered or not, per request whose connection was established before BEFORE."""
        return [ok for connected, ok in self.results if connected < before]
