"""Every engine as the master's worker, against real processes: the master's duties per engine, the hybrids' own
liveness rules, what a crash costs each, and --reuseport.

The master is the same for every engine (its duties with the default sync workers: test_master.py); what differs
is what a worker holds when it dies and how the master tells it is stuck. The engines come from the one table
(support.CONFIGS: `prefork --engine …` for each engine; the hybrids are the same engines with other defaults).
Every figure comes from outside: psutil on the master's children, `/_lab/stats` (`per_worker` is read from the
shared-memory board), the server's log and its exit status.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import statistics
import threading
import time

import httpx
import pytest

from .support import CONFIGS, UNDER_MASTER, Background, Conn, Server, children, log_time_of, wait_for
from .support.processes import listening_sockets


def start(start_server, config: str, *extra: str, **kw: object) -> Server:
    """`webmodels serve prefork --engine E` for CONFIG's engine, with EXTRA flags (--workers among them)."""
    cfg = CONFIGS[config]
    return start_server(cfg.model, *cfg.flags, *extra, **kw)


def pinned_connections(srv: Server, each: int, workers: set[int], limit: int = 200) -> dict[int, list[Conn]]:
    """Open keep-alive connections until every worker in WORKERS holds EACH of them (asked with /whoami)."""
    by_pid: dict[int, list[Conn]] = {pid: [] for pid in workers}
    spare: list[Conn] = []
    for _ in range(limit):
        if all(len(v) >= each for v in by_pid.values()):
            break
        c = Conn(srv, timeout=10)
        pid = c.call("/whoami").json()["pid"]
        (by_pid[pid] if len(by_pid[pid]) < each else spare).append(c)
    for c in spare:
        c.close()
    assert all(len(v) >= each for v in by_pid.values()), {p: len(v) for p, v in by_pid.items()}
    return by_pid


# -- the master's duties, for every engine ---------------------------------------------------------------------
@pytest.mark.parametrize("config", UNDER_MASTER)
def test_a_killed_worker_is_replaced_within_half_a_second(start_server, config: str) -> None:
    # Three kills, judged by the median: a loaded machine may keep the master off the CPU for one of them (the
    # SIGCHLD wake-up itself is timed nine times in test_master.py).
    srv = start(start_server, config, "--workers", "2")
    times = []
    for _ in range(3):
        before = srv.workers_become(2)
        victim = min(before)
        t0 = time.time()
        os.kill(victim, signal.SIGKILL)
        (replacement,) = wait_for(lambda: children(srv.pid) - before, timeout=5, what="a replacement worker process")
        times.append(log_time_of(srv.said(f"spawned (pid {replacement})")) - t0)  # the master's clock: it forked
        wait_for(lambda: replacement in srv.per_worker(), timeout=5, what="the replacement on the board")
        assert replacement in srv.workers_become(2, exclude={victim})
    print(f"{config}: killed worker replaced (forked) {', '.join(f'{t * 1000:.0f}' for t in times)} ms after the kill")
    assert statistics.median(times) < 0.5, times
    c = srv.counters()
    assert c["worker_exits"]["signal"] == 3 and c["respawns"] == 3
    with httpx.Client(base_url=srv.url, timeout=5) as client:  # and it serves: the one not killed answers too
        assert all(client.get("/", headers={"Connection": "close"}).status_code == 200 for _ in range(10))


@pytest.mark.parametrize("config", UNDER_MASTER)
def test_sigterm_drains_an_in_flight_request_then_exits_0(start_server, config: str) -> None:
    # 2 s: longer than a second (a graceful timeout capped at 1 s would cut it), long enough to be seen in flight
    srv = start(start_server, config, "--workers", "2", "--graceful-timeout", "10")
    slow = Background(srv, "/io?ms=2000")
    wait_for(lambda: srv.in_flight() >= 1, what="the slow request in flight")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert slow.result() == 200, slow.error
    assert srv.wait_exit(15) == 0
    # the drain ends with the request, not at --graceful-timeout
    assert time.monotonic() - t0 < 8.0
    srv.said("bye")
    # "drained" is logged only when nothing was forced (test_master.py forces one and checks the opposite)
    assert re.search(r"shutdown: drained in \d+\.\d+s; bye", srv.log), srv.log
    assert "forcing" not in srv.log


@pytest.mark.parametrize("config", UNDER_MASTER)
def test_max_requests_recycles_a_worker_without_failing_a_request(start_server, config: str) -> None:
    srv = start(start_server, config, "--workers", "2", "--max-requests", "10")
    statuses = []
    for _ in range(40):  # a fresh connection each: the count is over all of a worker's connections
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            statuses.append(c.get("/").status_code)
    assert statuses == [200] * 40
    wait_for(lambda: srv.counters()["worker_exits"]["recycled"] >= 2, timeout=10, what="two recycled workers")
    c = srv.counters()
    assert c["worker_exits"]["crash"] == c["worker_exits"]["signal"] == c["worker_exits"]["timeout"] == 0
    assert c["requests"] >= 40
    srv.said("--max-requests reached")


@pytest.mark.parametrize("config", UNDER_MASTER)
def test_a_recycling_worker_finishes_what_it_holds(start_server, config: str) -> None:
    # One worker, --max-requests 1: the short request's answer starts the recycle while the long one is held.
    # No stats request before: with --max-requests 1 it would recycle the worker itself (not even to see it booted).
    srv = start(start_server, config, "--workers", "1", "--max-requests", "1", booted=False)
    line = srv.said("worker 0 spawned", timeout=10)
    pid = int(line.rsplit("pid ", 1)[1].rstrip(")"))
    with Conn(srv, timeout=10) as short, Conn(srv, timeout=10) as long:
        short.get("/io?ms=300")
        long.get("/io?ms=1200")
        assert short.read_reply().status == 200
        reply = long.read_reply()
        assert reply.status == 200 and reply.closes
    srv.said(f"(pid {pid}) exited: exit status 88 (recycled), --max-requests reached [recycled]", timeout=10)
    assert srv.counters()["worker_exits"]["crash"] == 0


# -- liveness from inside the engine ------------------------------------------------------------------------------
def test_hybrid_loop_hung_worker_is_killed_within_timeout_while_the_other_serves(start_server) -> None:
    srv = start_server("hybrid-loop", "--timeout", "1")
    before = srv.workers_become(2)
    hang = Background(srv, "/fault/hang?s=60", timeout=20)
    srv.said("fault: /fault/hang")
    t0 = time.monotonic()
    answered, slowest, replaced_seen = 0, 0.0, None
    while time.monotonic() - t0 < 6:
        t1 = time.monotonic()
        r = httpx.get(srv.url + "/", timeout=1.0)  # a fresh connection every time; a stuck worker would time out
        slowest = max(slowest, time.monotonic() - t1)
        assert r.status_code == 200
        answered += 1
        if replaced_seen is None and children(srv.pid) - before:
            replaced_seen = time.monotonic()
        if replaced_seen is not None and time.monotonic() - replaced_seen > 0.3:
            break
    assert replaced_seen is not None, "the hung worker was not replaced"
    hung_at = srv.log_time("fault: /fault/hang")
    killed_at = srv.log_time("[timeout]")
    print(f"hybrid-loop: hung worker killed {killed_at - hung_at:.3f}s after the hang (--timeout 1); the other "
          f"worker answered {answered} fresh connections meanwhile, slowest {slowest * 1000:.0f} ms")
    assert killed_at - hung_at < 1.5
    hang.result()
    assert hang.status is None and isinstance(hang.error, httpx.TransportError)
    wait_for(lambda: srv.counters()["worker_exits"]["timeout"] == 1, timeout=5, what="exits.timeout == 1")
    after = srv.workers_become(2)
    assert len(after - before) == 1
    srv.said("with its loop silent")


def test_a_gevent_worker_whose_hub_is_blocked_is_killed_after_timeout(start_server) -> None:
    srv = start(start_server, "prefork-gevent", "--workers", "2", "--timeout", "1")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: httpx.get(srv.url + "/fault/hang?s=30", timeout=30))
        wait_for(lambda: srv.counters()["worker_exits"]["timeout"] == 1, timeout=10,
                 what="the hung worker killed by the master")
    srv.said("with its loop silent")
    with srv.client() as c:  # the other worker (and the replacement) serve
        assert all(c.get("/", headers={"Connection": "close"}).status_code == 200 for _ in range(4))


def test_loop_worker_that_waits_is_not_hung(start_server) -> None:
    srv = start_server("hybrid-loop", "--timeout", "1", "--workers", "1")
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/io?ms=1600").status_code == 200  # waiting on an effect: the loop keeps ticking
    assert srv.counters()["worker_exits"]["timeout"] == 0


def test_threads_worker_is_hung_only_when_every_thread_is(start_server) -> None:
    srv = start_server("hybrid-threads", "--workers", "1", "--threads", "2", "--timeout", "1")
    (pid,) = srv.workers_become(1)
    first = Background(srv, "/fault/hang?s=60", timeout=20)
    wait_for(lambda: srv.per_worker()[pid]["busy_threads"] >= 1, timeout=5, what="one hung thread")
    time.sleep(1.6)  # longer than --timeout: one hung thread of two is not a hung worker
    with httpx.Client(base_url=srv.url, timeout=5) as c:
        assert c.get("/").status_code == 200
    row = srv.per_worker()[pid]
    assert row["busy_threads"] == 2  # the hung one + the one answering this stats request
    assert srv.counters()["worker_exits"]["timeout"] == 0
    second = Background(srv, "/fault/hang?s=60", timeout=20)
    wait_for(lambda: srv.counters()["worker_exits"]["timeout"] == 1, timeout=10, what="the worker killed once both threads hang")
    # by the master's own clock: the second hang's line to the kill (--timeout after both threads were busy)
    hung_at = max(log_time_of(ln) for ln in srv.lines if "fault: /fault/hang" in ln)
    killed_at = srv.log_time("with every thread busy")
    print(f"hybrid-threads: worker with 2 of 2 threads hung killed {killed_at - hung_at:.3f}s after the second hang")
    assert 0.9 <= killed_at - hung_at < 1.0 + 0.5
    for b in (first, second):
        b.result()
        assert isinstance(b.error, httpx.TransportError)
    srv.workers_become(1, exclude={pid})


# -- crashes cost one worker's share -----------------------------------------------------------------------------
def test_hybrid_threads_crash_costs_only_that_workers_in_flight(start_server) -> None:
    srv = start_server("hybrid-threads")
    workers = srv.workers_become(2)
    conns = pinned_connections(srv, 5, workers)  # 4 slow requests + 1 crasher on one, 4 slow on the other
    victim, survivor = sorted(workers)
    results: dict[int, list[object]] = {victim: [], survivor: []}
    lock = threading.Lock()

    def slow(pid: int, c: Conn) -> None:
        try:
            out: object = c.call("/io?ms=3000").status
        except OSError as exc:
            out = exc
        with lock:
            results[pid].append(out)

    threads = [threading.Thread(target=slow, args=(pid, c)) for pid in (victim, survivor) for c in conns[pid][:4]]
    for t in threads:
        t.start()
    # 3 s each: still in flight when the crash comes, however long a busy machine takes to see all eight
    wait_for(lambda: (pw := srv.per_worker())[victim]["in_flight"] >= 4 and pw[survivor]["in_flight"] >= 4,
             timeout=10, what="4 slow requests in flight on each worker")
    crasher = conns[victim][4]
    crasher.get("/fault/crash")
    for t in threads:
        t.join(15)
    print(f"hybrid-threads crash: victim {results[victim]}, survivor {results[survivor]}")
    assert results[survivor] == [200] * 4  # the other worker's requests all succeed
    assert len(results[victim]) == 4 and all(isinstance(r, OSError) for r in results[victim])  # its own are lost
    wait_for(lambda: srv.counters()["worker_exits"]["crash"] == 1, timeout=5, what="exits.crash == 1")
    srv.workers_become(2, exclude={victim})
    for cs in conns.values():
        for c in cs:
            c.close()


# -- where connections go: --reuseport ------------------------------------------------------------------------------
@pytest.mark.parametrize("config", UNDER_MASTER)
def test_reuseport_spreads_connections_over_every_worker(start_server, config: str) -> None:
    srv = start(start_server, config, "--workers", "2", "--reuseport")
    workers = srv.workers_become(2)
    srv.said("reuseport")
    with httpx.Client(base_url=srv.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(200):  # no keep-alive: 200 fresh connections
            assert c.get("/").status_code == 200
    data = srv.stats()
    rows = {r["pid"]: r for r in data["per_worker"]}
    assert set(rows) == workers
    print(f"--reuseport, {config}: accepted per worker {[r['accepted'] for r in rows.values()]}")
    assert all(r["accepted"] > 0 for r in rows.values()), rows
    assert sum(r["accepted"] for r in rows.values()) >= 201
    assert sum(r["requests"] for r in rows.values()) == data["counters"]["requests"]


@pytest.mark.parametrize("config", UNDER_MASTER)
def test_reuseport_gives_each_worker_a_listener_of_its_own(start_server, config: str) -> None:
    # Spreading alone proves nothing (a shared listener spreads too): count the listening sockets.
    shared = start(start_server, config, "--workers", "3")
    assert listening_sockets(shared.port) == 1
    own = start(start_server, config, "--workers", "3", "--reuseport")
    assert listening_sockets(own.port) == 3
    assert own.counters()["reuseport"]["tcp_migrate_req"] in (-1, 0, 1)
    os.kill(own.pid, signal.SIGTTOU)  # a worker fewer: its listener closes with it
    wait_for(lambda: listening_sockets(own.port) == 2, timeout=10, what="one listener per remaining worker")


@pytest.mark.parametrize("config", UNDER_MASTER)
def test_reuseport_master_listening_line_means_a_client_is_answered(start_server, config: str) -> None:
    # With --reuseport the master makes every worker's listener (and keeps it). A worker that boots slowly (0.5 s
    # here) must not leave a window in which the start-up line is out and a client connecting on it is refused:
    # the connection waits in the listener's queue for the worker.
    srv = start(start_server, config, "--workers", "1", "--reuseport", env={"WEBMODELS_FAULT_BOOT_DELAY": "0.5"})
    t0 = time.monotonic()
    assert srv.get("/").status_code == 200
    print(f"--reuseport, {config}: the first request on the word answered after {time.monotonic() - t0:.3f}s")
