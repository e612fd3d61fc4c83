"""The fault injector: one greenlet per run, on the master (or the single local process), never on workers.

Why not a "chaos user" among the users: users are spread over worker processes by Locust's dispatcher, so
"exactly one injector per server" would depend on user counts, weights and worker indexes, and a user that
shares its greenlet with the load is held up by the very hang it injects. The controlling process exists
exactly once in every mode (local, --processes, --master/--worker), so injecting there gives one injector
per server by construction.

What to fire and when is a schedule from webmodels.chaos (pure, shared with the bench's soak): `--fault KIND
--fault-every N` fires KIND at every server it applies to every N s (`kill-worker` only hits the master
models: prefork, hybrid-threads, hybrid-loop), none in the last N s of a timed run; `--fault chaos` fires
the seeded schedule (`--chaos-seed`): a random fault every 1–3 s, each server in turn. The kinds and their
requests are webmodels.faults' table.

The fault request is still a request of the run: it is reported through Locust's `request` event, so it
appears in Locust's statistics ("prefork /fault/crash") and in the accounting as *expected*, and the
injection time is handed to `on_injected` (which tells the workers, so they can time the recovery). That
time is when the fault took effect: for the kinds that end a process (crash, segfault, kill-worker,
kill-process) the end of the fault request (the process died then; a user response finishing in between is
not a recovery), for hang, leak and raise its start. A fault request still in flight when the test stops (a
long hang) is abandoned unreported, as Locust does with its users' in-flight requests.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

import gevent
from geventhttpclient import HTTPClient

from webmodels import chaos
from webmodels.faults import BY_KIND, KINDS, request

log = logging.getLogger("loadtest.chaos")

CHAOS = "chaos"  # --fault chaos: the seeded schedule over every kind
FAULTS = ("none", *KINDS, CHAOS)  # the choices of --fault


class HTTPStatusError(Exception):
    """A fault request answered with an error status (for Locust's failure table)."""


def schedule(targets: list[str], fault: str, every: float, seed: int, until: float | None) -> Iterator[chaos.Shot]:
    """The shots of `--fault FAULT` at TARGETS: seeded for chaos, periodic for one kind."""
    if fault == CHAOS:
        return chaos.seeded(seed, targets, until)
    return chaos.periodic(targets, fault, every, until)


class Injector:
    """Fire a schedule's shots at the servers while started."""

    def __init__(self, environment, on_injected: Callable[[str, str, float], None]) -> None:
        self.environment = environment
        self.on_injected = on_injected
        self.loops: list[gevent.Greenlet] = []
        self.shots: list[gevent.Greenlet] = []

    def start(self, targets: dict[str, str], fault: str, every: float, *, seed: int = 1,
              until: float | None = None, hang_s: int = 5, leak_mb: int = 16, timeout: float = 10.0) -> None:
        self.stop()
        if fault == "none" or not targets:
            return
        shots = schedule(list(targets), fault, every, seed, until)
        how = f"seed {seed}" if fault == CHAOS else f"every {every:g} s"
        log.info("injecting %s (%s) into %s", fault, how, ", ".join(targets))
        self.loops.append(gevent.spawn(self._loop, targets, shots, hang_s, leak_mb, timeout))

    def stop(self) -> None:
        # No shot may report after the test's final count (the accounting's last outbox is sent right after
        # this): Locust would count a request the table never saw. So the loops first and to the end (a loop
        # waking meanwhile would spawn a shot not in the list), then every shot, each kill waited for.
        gevent.killall(self.loops, block=True, timeout=2)
        gevent.killall(self.shots, block=True, timeout=2)
        self.loops, self.shots = [], []

    def _loop(self, targets: dict[str, str], shots: Iterator[chaos.Shot], hang_s: int, leak_mb: int,
              timeout: float) -> None:
        t0 = time.monotonic()
        for shot in shots:
            gevent.sleep(max(0.0, t0 + shot.at - time.monotonic()))
            self.shots = [g for g in self.shots if not g.dead]
            path = request(shot.kind, hang_s=hang_s, leak_mb=leak_mb)
            # a hang answers after hang_s (thread pool, event loop) or when a master kills the worker
            wait = timeout + (hang_s if shot.kind == "hang" else 0)
            self.shots.append(gevent.spawn(self._fire, shot.server, targets[shot.server], shot.kind, path, wait))

    def _fire(self, server: str, url: str, fault: str, path: str, timeout: float) -> None:
        ends_process = BY_KIND[fault].ends_process
        start = time.time()
        if not ends_process:
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
        if ends_process:  # the process died when the fault request ended: recovery counts from there
            self.on_injected(server, fault, time.time())
        self.environment.events.request.fire(
            request_type="POST", name=f"{server} {path.partition('?')[0]}",
            response_time=(time.perf_counter() - t0) * 1000,
            response_length=length, response=None, exception=exc, start_time=start, url=url + path,
            context={"server": server, "fault": fault})
