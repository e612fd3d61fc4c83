"""Raw-socket HTTP/1.1 clients on asyncio for what Locust and wrk cannot show: per-connection counts.

Totals hide a server that serves a few connections and starves the rest, so these clients count per
connection: completions of back-to-back keep-alive requests (fairness), idle connections held and whether
each ever got its first answer (many idle clients), request heads trickled one byte at a time (slow
clients); and `send_all` sends a fixed number of requests from many clients at once (the /counter race),
so a figure does not depend on how fast a busy machine lets a timed run go. Stdlib asyncio only: no HTTP
library in between that might retry, pool or reconnect behind our back.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

HELLO = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
HELLO_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def address(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL."""
    u = urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or 80


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return (status, server keeps the connection open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, close = 0, lines[0].startswith("HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = value == "close"
    if length:
        await reader.readexactly(length)
    return status, not close


# -- fairness: back-to-back keep-alive requests, counted per connection -------------------------------------
@dataclass
class Fairness:
    completions: list[int]  # 200s per connection slot
    refused: int = 0  # non-200 answers (503 ...)
    reconnects: int = 0  # the server closed a slot's connection (or refused it) and the slot reconnected
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        c = sorted(self.completions)
        med = statistics.median(c) if c else 0
        return {"connections": len(c), "min": c[0] if c else None, "median": med, "max": c[-1] if c else None,
                "min_over_median": round(c[0] / med, 3) if c and med else None,
                "starved": sum(1 for x in c if x == 0), "total": sum(c), "refused": self.refused,
                "reconnects": self.reconnects, "errors": self.errors}


async def _fair_slot(host: str, port: int, i: int, out: Fairness, deadline: float, timeout: float) -> None:
    writer = None
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.write(HELLO)
            status, keep = await asyncio.wait_for(read_response(reader), max(0.01, deadline - time.monotonic()))
            if status == 200:
                out.completions[i] += 1
            else:
                out.refused += 1
            if not keep:
                writer.close()
                writer = None
                out.reconnects += 1
        except asyncio.TimeoutError:
            break  # the run ended while this connection waited: not an error, just not a completion
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            out.errors += 1
            if writer is not None:
                writer.close()
            writer = None
            out.reconnects += 1
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def fairness(host: str, port: int, connections: int, seconds: float, timeout: float = 5.0) -> dict[str, Any]:
    """CONNECTIONS keep-alive clients send GET / back to back for SECONDS; completions per connection."""
    out = Fairness([0] * connections)

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_fair_slot(host, port, i, out, deadline, timeout) for i in range(connections)))
    asyncio.run(main())
    return out.summary()


# -- timing one request on a fresh connection ---------------------------------------------------------------
async def timed_get(host: str, port: int, timeout: float, request: bytes = HELLO_CLOSE) -> tuple[float | None, str]:
    """One GET on a fresh connection; (milliseconds, "ok") or (None, why it failed)."""
    t0 = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            status, _ = await read_response(reader)
        if status != 200:
            return None, f"HTTP {status}"
        return (time.perf_counter() - t0) * 1000, "ok"
    except TimeoutError:
        return None, "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        return None, type(exc).__name__
    finally:
        if writer is not None:
            writer.close()


@dataclass
class Probe:
    """A client that sends GET / every INTERVAL seconds (sequentially, fresh connection each) and keeps times."""

    host: str
    port: int
    interval: float = 0.1
    timeout: float = 2.0
    ms: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    async def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (now := time.monotonic()) < end:
            ms, why = await timed_get(self.host, self.port, min(self.timeout, max(0.05, end - now + self.timeout)))
            if ms is None:
                self.failures[why] = self.failures.get(why, 0) + 1
            else:
                self.ms.append(ms)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - now)))

    def summary(self) -> dict[str, Any]:
        n = len(self.ms) + sum(self.failures.values())
        xs = sorted(self.ms)
        return {"sent": n, "ok": len(xs), "success_pct": round(100 * len(xs) / n, 1) if n else None,
                "p50_ms": round(xs[len(xs) // 2], 2) if xs else None,
                "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 2) if xs else None,
                "failures": dict(self.failures)}


# -- one request on each of N connections, all sent at once ---------------------------------------------------
@dataclass
class _Burst:
    total: int
    within_s: float
    ready: int = 0  # connections open (or failed to open)
    t0: float = 0.0  # when the requests went out
    all_ready: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)

    def one_ready(self) -> None:
        self.ready += 1
        if self.ready == self.total:
            self.all_ready.set()


async def _burst_one(host: str, port: int, request: bytes, b: _Burst) -> tuple[str, float | None]:
    writer = None
    try:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), b.within_s)
        finally:
            b.one_ready()
        await b.go.wait()  # every connection open first, then every request at once
        writer.write(request)
        left = max(0.01, b.t0 + b.within_s - time.monotonic())
        status, _ = await asyncio.wait_for(read_response(reader), left)
        return ("answered" if status == 200 else "refused"), time.monotonic() - b.t0
    except asyncio.TimeoutError:
        return "waiting", None
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        return "errors", None
    finally:
        if writer is not None:
            writer.close()


async def burst(targets: dict[str, tuple[str, int]], n: int, request: bytes,
                within_s: float) -> dict[str, dict[str, Any]]:
    """Open N connections to each target, then send REQUEST on all of them at once; count what came back WITHIN_S.

    answered (200), refused (another status: a 503), waiting (no answer when WITHIN_S ran out), errors; and the
    slowest answer's seconds. Every target at once: the requests wait, they do not compete for CPU.
    """
    b = _Burst(total=n * len(targets), within_s=within_s)
    tasks = {name: [asyncio.create_task(_burst_one(*addr, request, b)) for _ in range(n)]
             for name, addr in targets.items()}
    try:  # the kernel accepts a connection into the backlog for a server that is busy: opening is quick
        await asyncio.wait_for(b.all_ready.wait(), within_s)
    except asyncio.TimeoutError:
        pass
    b.t0 = time.monotonic()
    b.go.set()
    out = {}
    for name, ts in tasks.items():
        got = await asyncio.gather(*ts)
        counts = {k: sum(1 for what, _ in got if what == k) for k in ("answered", "refused", "waiting", "errors")}
        slowest = max((t for what, t in got if what == "answered" and t is not None), default=None)
        out[name] = {**counts, "slowest_s": None if slowest is None else round(slowest, 3)}
    return out


# -- a fixed number of requests, many clients at once ------------------------------------------------------------
def get(path: str) -> bytes:
    """A keep-alive GET of PATH."""
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


async def _sender(host: str, port: int, requests: list[tuple[str, bytes]], out: dict[str, dict[str, int]],
                  timeout: float) -> None:
    writer = None
    try:
        for label, raw in requests:
            count = out.setdefault(label, {"ok": 0, "failed": 0})
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                writer.write(raw)
                status, keep = await asyncio.wait_for(read_response(reader), timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
                count["failed"] += 1
                keep = False
            else:
                count["ok" if status == 200 else "failed"] += 1
            if not keep and writer is not None:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


def send_all(servers: dict[str, tuple[str, int]], requests: list[tuple[str, bytes]], clients: int,
             timeout: float = 10.0) -> dict[str, dict[str, dict[str, int]]]:
    """CLIENTS keep-alive clients per server, all at once, each sending REQUESTS in order: ok / failed per label.

    Bounded by count, not time: the figures do not depend on how fast a busy machine lets the clients go.
    """
    out: dict[str, dict[str, dict[str, int]]] = {}

    async def main() -> None:
        per_client = {(name, i): {} for name in servers for i in range(clients)}
        await asyncio.gather(*(_sender(*servers[name], requests, counts, timeout)
                               for (name, _), counts in per_client.items()))
        for (name, _), counts in per_client.items():
            for label, c in counts.items():
                total = out.setdefault(name, {}).setdefault(label, {"ok": 0, "failed": 0})
                total["ok"] += c["ok"]
                total["failed"] += c["failed"]
    asyncio.run(main())
    return out
