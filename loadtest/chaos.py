"""The fault injector: one greenlet per loaded server, on the master (or the single local process), never on workers.

Why not a "chaos user" among the users: users are spread over worker processes by Locust's dispatcher, so
"exactly one injector per server" would depend on user counts, weights and worker indexes, and a user that
shares its greenlet with the load is held up by the very hang it injects. The controlling process exists
exactly once in every mode (local, --processes, --master/--worker), so injecting there gives one injector
per server by construction and a period that does not drift with response times.

The fault request is still a request of the run: it is reported through Locust's `request` event, so it
appears in Locust's statistics ("prefork /fault/crash") and in the accounting as *expected*, and the
injection time is handed to `on_injected` (which tells the workers, so they can time the recovery). That
time is when the fault took effect: for crash, segfault and kill-worker the end of the fault request (the
process died then; a user response finishing in between is not a recovery), for hang, leak and raise its
start. `kill-worker` is `webmodels kill MODEL --worker` (POST /_lab/kill?target=worker, SIGKILL to one
worker, answered by another): it applies to the master models only (prefork, hybrid-threads, hybrid-loop;
the locustfile leaves the others out of its targets).
A fault request still in flight when the test stops (a long hang) is abandoned unreported, as Locust does
with its users' in-flight requests.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import gevent
from geventhttpclient import HTTPClient

log = logging.getLogger("loadtest.chaos")

FAULTS = ("none", "crash", "segfault", "hang", "leak", "raise", "kill-worker")
FATAL = ("crash", "segfault", "kill-worker")  # kill a process; the others start hurting when they are sent


class HTTPStatusError(Exception):
    """A fault request answered with an error status (for Locust's failure table)."""


def fault_path(fault: str, hang_s: int, leak_mb: int) -> str:
    return {"crash": "/fault/crash", "segfault": "/fault/segfault", "hang": f"/fault/hang?s={hang_s}",
            "leak": f"/fault/leak?mb={leak_mb}", "raise": "/fault/raise",
            "kill-worker": "/_lab/kill?target=worker"}[fault]


class Injector:
    """Fire FAULT at each server every EVERY seconds while started."""

    def __init__(self, environment, on_injected: Callable[[str, str, float], None]) -> None:
        self.environment = environment
        self.on_injected = on_injected
        self.loops: list[gevent.Greenlet] = []
        self.shots: list[gevent.Greenlet] = []

    def start(self, targets: dict[str, str], fault: str, every: float, *, hang_s: int = 5, leak_mb: int = 16,
              timeout: float = 10.0) -> None:
        self.stop()
        if fault == "none" or every <= 0 or not targets:
            return
        path = fault_path(fault, hang_s, leak_mb)
        # a hang answers after hang_s (thread pool, event loop) or when the prefork master kills the worker
        shot_timeout = timeout + (hang_s if fault == "hang" else 0)
        log.info("injecting %s every %.1f s into %s", path, every, ", ".join(targets))
        for server, url in targets.items():
            self.loops.append(gevent.spawn(self._loop, server, url, fault, path, every, shot_timeout))

    def stop(self) -> None:
        gevent.killall(self.loops + self.shots, block=False)
        self.loops, self.shots = [], []

    def _loop(self, server: str, url: str, fault: str, path: str, every: float, timeout: float) -> None:
        while True:
            gevent.sleep(every)
            self.shots = [g for g in self.shots if not g.dead]
            self.shots.append(gevent.spawn(self._fire, server, url, fault, path, timeout))

    def _fire(self, server: str, url: str, fault: str, path: str, timeout: float) -> None:
        start = time.time()
        if fault not in FATAL:
            self.on_injected(server, fault, start)
        t0 = time.perf_counter()
        exc: BaseException | None = None
        length = 0
        client = HTTPClient.from_url(url, connection_timeout=timeout, network_timeout=timeout, concurrency=1)
        try:
            # POST, not GET: an HTTP client may re-send an idempotent GET after the connection drops
            # (geventhttpclient does, up to twice), and a re-sent /fault/crash kills a second worker.
            resp = client.post(path, body=b"")
            length = len(resp.read())
            if resp.status_code >= 400:
                exc = HTTPStatusError(f"HTTP {resp.status_code}")
        except Exception as e:  # noqa: BLE001 - a dead connection is what most faults look like
            exc = e
        finally:
            client.close()
        if fault in FATAL:  # the process died when the fault request ended: recovery counts from there
            self.on_injected(server, fault, time.time())
        self.environment.events.request.fire(
            request_type="POST", name=f"{server} {path.partition('?')[0]}",
            response_time=(time.perf_counter() - t0) * 1000,
            response_length=length, response=None, exception=exc, start_time=start, url=url + path,
            context={"server": server, "fault": fault})
