"""Start real servers as subprocesses on loopback port 0 (the port is read from their start-up line), stop them by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, TypeVar

import httpx

from webmodels import launch
from webmodels.config import MASTER_MODELS
from webmodels.launch import addr_in_use

MODELS = ("threadpool", "prefork", "eventloop")
# Every configuration the conformance suite runs, by test id: (model, flags). Every engine alone and under a
# master, and the two hybrid names (the same engines with their own defaults).
SERVERS: dict[str, tuple[str, ...]] = {
    "threadpool": ("threadpool",),
    "prefork": ("prefork", "--workers", "2"),
    "prefork-threads": ("prefork", "--engine", "threads", "--workers", "2"),
    "prefork-loop": ("prefork", "--engine", "loop", "--workers", "2"),
    "eventloop": ("eventloop",),
    "hybrid-threads": ("hybrid-threads",),
    "hybrid-loop": ("hybrid-loop",),
    "greenthreads": ("greenthreads",),
    "prefork-gevent": ("prefork", "--engine", "gevent", "--workers", "2"),
}


def free_port() -> int:
    """A port free on 127.0.0.1 right now — and maybe not a moment later: use it through with_free_port()."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


T = TypeVar("T")


def with_free_port(start: Callable[[int], T], attempts: int = 5) -> T:
    """Call START(port) with a port that was free a moment ago; if it fails because something took the port
    meanwhile (an error that says "address already in use"), try again with another port.

    For tools that cannot bind port 0 and report the port back (Locust's web UI and master port). Servers
    we start ourselves bind port 0 and we read the port from their start-up line (Server below).
    """
    for attempt in range(attempts):
        try:
            return start(free_port())
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is a port clash
            if attempt + 1 == attempts or not addr_in_use(str(exc)):
                raise
    raise AssertionError("unreachable")


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> object:
    """Poll PREDICATE until it returns something truthy; fail after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error on timeout
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" +
                         (f" (last error: {last_exc!r})" if last_exc else ""))


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM PROC (by its PID, never by name), wait up to TIMEOUT, then SIGKILL it."""
    launch.stop(proc, timeout)


class FreshClients:
    """N threads looping: connect, wait PAUSE, send `GET PATH` with `Connection: close`, read the status line.

    Each established connection is one request: `results` holds (connected at, answered 200). A refused
    connect sent nothing and is not a request: it is counted in `refused` and retried after 10 ms (or, with
    stop_on_refused, ends that client: the listener is gone for good). Used by the "nothing established
    before a stop is lost" claims of every engine.
    """

    def __init__(self, srv: "Server", n: int, path: str = "/io?ms=100", pause: float = 0.0,
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


class Server:
    """One `webmodels serve` subprocess on 127.0.0.1:<the port it bound>, in its own session (launch.Process)."""

    def __init__(self, model: str, *args: str, env: dict[str, str] | None = None, faults: bool = True) -> None:
        self.model = model
        self.proc = launch.Process(launch.serve_argv(model, *args, faults=faults), env=launch.clean_env(env))
        self.pid = self.proc.pid
        if not self.proc.wait_listening(20):
            self.kill()
            raise AssertionError(f"{model} did not start:\n{self.log}")
        self.address, self.host, self.port = self.proc.address, self.proc.host, self.proc.port
        self.url = f"http://{self.address}"
        if model in MASTER_MODELS and not {"WEBMODELS_FAULT_BOOT_DELAY", "WEBMODELS_FAULT_BOOT"} & set(env or {}):
            # "listening" comes from the master before its workers boot (a gevent worker patches for ~0.15 s):
            # a test times its client's actions from a server that serves, not from one still booting.
            wait_for(self._booted, timeout=20, what=f"{model}'s workers booted")

    def _booted(self) -> bool:
        workers = self.stats()["per_worker"]
        return bool(workers) and all(w["booted"] for w in workers)

    @property
    def lines(self) -> list[str]:
        return self.proc.lines

    @property
    def log(self) -> str:
        return self.proc.log

    def client(self, **kw: object) -> httpx.Client:
        kw.setdefault("timeout", 10.0)
        return httpx.Client(base_url=self.url, **kw)  # type: ignore[arg-type]

    def get(self, path: str, **kw: object) -> httpx.Response:
        with self.client() as c:
            return c.get(path, **kw)  # type: ignore[arg-type]

    def stats(self) -> dict:
        return self.get("/_lab/stats").json()

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
