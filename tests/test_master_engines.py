"""Engines inside the prefork master, against real processes: respawn, drain, hangs, crashes, recycling, reuseport.

The master is the same for every engine; what differs is what a worker holds when it dies and how the
master tells it is stuck. Every figure comes from outside: psutil on the master's children, `/_lab/stats`
(`per_worker` is read from the shared-memory board), the server's log and its exit status.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import psutil
import pytest

from .support.raw import Conn
from .support import Server, wait_for
from .test_master import Background, counters, in_flight_becomes, log_time, workers_become

ENGINES = ("sync", "threads", "loop")


def start(start_server, engine: str, *args: str, **kw: object) -> Server:
    return start_server("prefork", "--engine", engine, *args, **kw)


def live_children(pid: int) -> set[int]:
    out = set()
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def per_worker(srv: Server) -> dict[int, dict]:
    return {row["pid"]: row for row in srv.stats()["per_worker"]}


def pinned_connections(srv: Server, each: int, workers: set[int], limit: int = 200) -> dict[int, list[Conn]]:
    """Open keep-alive connections until every worker in WORKERS holds EACH of them (asked with /whoami)."""
    by_pid: dict[int, list[Conn]] = {pid: [] for pid in workers}
    spare: list[Conn] = []
    for _ in range(limit):
        if all(len(v) >= each for v in by_pid.values()):
            break
        c = Conn(srv.host, srv.port, timeout=10)
        c.get("/whoami")
        pid = c.read_reply().json()["pid"]
        (by_pid[pid] if len(by_pid[pid]) < each else spare).append(c)
    for c in spare:
        c.close()
    assert all(len(v) >= each for v in by_pid.values()), {p: len(v) for p, v in by_pid.items()}
    return by_pid


# -- the master's duties, for every engine ---------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_a_killed_worker_is_replaced_within_half_a_second(start_server, engine: str) -> None:
    srv = start(start_server, engine, "--workers", "2")
    before = workers_become(srv, 2)
    victim = min(before)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    new = wait_for(lambda: live_children(srv.pid) - before, timeout=5, interval=0.005,
                   what="a replacement worker process")
    elapsed = time.monotonic() - t0
    print(f"prefork --engine {engine}: killed worker replaced (forked) {elapsed * 1000:.0f} ms after the kill")
    assert elapsed < 0.5
    (replacement,) = new  # type: ignore[misc]
    wait_for(lambda: replacement in per_worker(srv), timeout=5, what="the replacement on the board")
    after = workers_become(srv, 2, exclude={victim})
    assert replacement in after
    c = counters(srv)
    assert c["worker_exits"]["signal"] == 1 and c["respawns"] == 1
    with httpx.Client(base_url=srv.url, timeout=5) as client:  # and it serves: the one not killed answers too
        assert all(client.get("/", headers={"Connection": "close"}).status_code == 200 for _ in range(10))


@pytest.mark.parametrize("engine", ENGINES)
def test_sigterm_drains_an_in_flight_request_then_exits_0(start_server, engine: str) -> None:
    srv = start(start_server, engine, "--workers", "2")
    workers_become(srv, 2)
    slow = Background(srv, "/io?ms=2000")  # long enough to be seen in flight on a busy machine
    in_flight_becomes(srv, 1)
    srv.signal(signal.SIGTERM)
    assert slow.result() == 200, slow.error
    assert srv.wait_exit(10) == 0
    wait_for(lambda: "drained" in srv.log, timeout=5, what="the master's 'drained' line")


@pytest.mark.parametrize("engine", ENGINES)
def test_max_requests_recycles_a_worker_without_failing_a_request(start_server, engine: str) -> None:
    srv = start(start_server, engine, "--workers", "2", "--max-requests", "10")
    workers_become(srv, 2)
    statuses = []
    for _ in range(40):  # a fresh connection each: the count is over all of a worker's connections
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            statuses.append(c.get("/").status_code)
    assert statuses == [200] * 40
    wait_for(lambda: counters(srv)["worker_exits"]["recycled"] >= 2, timeout=10, what="two recycled workers")
    c = counters(srv)
    assert c["worker_exits"]["crash"] == c["worker_exits"]["signal"] == c["worker_exits"]["timeout"] == 0
    assert c["requests"] >= 40
    assert "--max-requests reached" in srv.log


@pytest.mark.parametrize("engine", ENGINES)
def test_a_recycling_worker_finishes_what_it_holds(start_server, engine: str) -> None:
    # One worker, --max-requests 1: the short request's answer starts the recycle while the long one is held.
    # No stats request before: with --max-requests 1 it would recycle the worker itself.
    srv = start(start_server, engine, "--workers", "1", "--max-requests", "1")
    line = wait_for(lambda: next((ln for ln in srv.lines if "worker 0 spawned" in ln), None), timeout=10,
                    what="the first worker")
    pid = int(str(line).rsplit("pid ", 1)[1].rstrip(")"))
    with Conn(srv.host, srv.port, timeout=10) as short, Conn(srv.host, srv.port, timeout=10) as long:
        short.get("/io?ms=300")
        long.get("/io?ms=1200")
        assert short.read_reply().status == 200
        reply = long.read_reply()
        assert reply.status == 200 and reply.headers.get("connection") == "close"
    wait_for(lambda: f"(pid {pid}) exited: exit status 88 (recycled), --max-requests reached [recycled]"
             in srv.log, timeout=10, what="the recycled worker's exit line")
    assert counters(srv)["worker_exits"]["crash"] == 0


# -- liveness from inside the engine ------------------------------------------------------------------------------
def test_hybrid_loop_hung_worker_is_killed_within_timeout_while_the_other_serves(start_server) -> None:
    srv = start_server("hybrid-loop", "--timeout", "1")
    before = workers_become(srv, 2)
    hang = Background(srv, "/fault/hang?s=60", timeout=20)
    wait_for(lambda: "fault: /fault/hang" in srv.log, timeout=5, interval=0.005, what="the hang to start")
    t0 = time.monotonic()
    answered, slowest, replaced_seen = 0, 0.0, None
    while time.monotonic() - t0 < 6:
        t1 = time.monotonic()
        r = httpx.get(srv.url + "/", timeout=1.0)  # a fresh connection every time; a stuck worker would time out
        slowest = max(slowest, time.monotonic() - t1)
        assert r.status_code == 200
        answered += 1
        if replaced_seen is None and live_children(srv.pid) - before:
            replaced_seen = time.monotonic()
        if replaced_seen is not None and time.monotonic() - replaced_seen > 0.3:
            break
    assert replaced_seen is not None, "the hung worker was not replaced"
    hung_at = log_time(srv, "fault: /fault/hang")
    killed_at = log_time(srv, "[timeout]")
    print(f"hybrid-loop: hung worker killed {killed_at - hung_at:.3f}s after the hang (--timeout 1); the other "
          f"worker answered {answered} fresh connections meanwhile, slowest {slowest * 1000:.0f} ms")
    assert killed_at - hung_at < 1.5
    hang.result()
    assert hang.status is None and isinstance(hang.error, httpx.TransportError)
    wait_for(lambda: counters(srv)["worker_exits"]["timeout"] == 1, timeout=5, what="exits.timeout == 1")
    after = workers_become(srv, 2)
    assert len(after - before) == 1
    assert "with its loop silent" in srv.log


def test_loop_worker_that_waits_is_not_hung(start_server) -> None:
    srv = start_server("hybrid-loop", "--timeout", "1", "--workers", "1")
    workers_become(srv, 1)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/io?ms=1600").status_code == 200  # waiting on an effect: the loop keeps ticking
    assert counters(srv)["worker_exits"]["timeout"] == 0


def test_threads_worker_is_hung_only_when_every_thread_is(start_server) -> None:
    srv = start_server("hybrid-threads", "--workers", "1", "--threads", "2", "--timeout", "1")
    (pid,) = workers_become(srv, 1)
    first = Background(srv, "/fault/hang?s=60", timeout=20)
    wait_for(lambda: per_worker(srv)[pid]["busy_threads"] >= 1, timeout=5, what="one hung thread")
    time.sleep(1.6)  # longer than --timeout: one hung thread of two is not a hung worker
    with httpx.Client(base_url=srv.url, timeout=5) as c:
        assert c.get("/").status_code == 200
    row = per_worker(srv)[pid]
    assert row["busy_threads"] == 2  # the hung one + the one answering this stats request
    assert counters(srv)["worker_exits"]["timeout"] == 0
    second = Background(srv, "/fault/hang?s=60", timeout=20)
    t0 = time.monotonic()
    wait_for(lambda: counters(srv)["worker_exits"]["timeout"] == 1, timeout=10, interval=0.02,
             what="the worker killed once both threads hang")
    elapsed = time.monotonic() - t0
    print(f"hybrid-threads: worker with 2 of 2 threads hung killed {elapsed:.3f}s after the second hang")
    assert elapsed < 1.0 + 1.5  # --timeout, plus polling through the replacement on a busy machine
    assert "with every thread busy" in srv.log
    for b in (first, second):
        b.result()
        assert isinstance(b.error, httpx.TransportError)
    workers_become(srv, 1, exclude={pid})


# -- crashes cost one worker's share -----------------------------------------------------------------------------
def test_hybrid_threads_crash_costs_only_that_workers_in_flight(start_server) -> None:
    srv = start_server("hybrid-threads")
    workers = workers_become(srv, 2)
    conns = pinned_connections(srv, 5, workers)  # 4 slow requests + 1 crasher on one, 4 slow on the other
    victim, survivor = sorted(workers)
    results: dict[int, list[object]] = {victim: [], survivor: []}
    lock = threading.Lock()

    def slow(pid: int, c: Conn) -> None:
        try:
            c.get("/io?ms=800")
            out: object = c.read_reply().status
        except OSError as exc:
            out = exc
        with lock:
            results[pid].append(out)

    threads = [threading.Thread(target=slow, args=(pid, c)) for pid in (victim, survivor) for c in conns[pid][:4]]
    for t in threads:
        t.start()
    wait_for(lambda: (pw := per_worker(srv))[victim]["in_flight"] >= 4 and pw[survivor]["in_flight"] >= 4,
             timeout=5, interval=0.01, what="4 slow requests in flight on each worker")
    crasher = conns[victim][4]
    crasher.get("/fault/crash")
    for t in threads:
        t.join(15)
    print(f"hybrid-threads crash: victim {results[victim]}, survivor {results[survivor]}")
    assert results[survivor] == [200] * 4  # the other worker's requests all succeed
    assert len(results[victim]) == 4 and all(isinstance(r, OSError) for r in results[victim])  # its own are lost
    wait_for(lambda: counters(srv)["worker_exits"]["crash"] == 1, timeout=5, what="exits.crash == 1")
    workers_become(srv, 2, exclude={victim})
    for cs in conns.values():
        for c in cs:
            c.close()


# -- where connections go ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_reuseport_spreads_connections_over_every_worker(start_server, engine: str) -> None:
    srv = start(start_server, engine, "--workers", "2", "--reuseport")
    workers = workers_become(srv, 2)
    assert "reuseport" in srv.log
    with httpx.Client(base_url=srv.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(200):  # no keep-alive: 200 fresh connections
            assert c.get("/").status_code == 200
    data = srv.stats()
    rows = {r["pid"]: r for r in data["per_worker"]}
    assert set(rows) == workers
    print(f"--reuseport, engine {engine}: accepted per worker {[r['accepted'] for r in rows.values()]}")
    assert all(r["accepted"] > 0 for r in rows.values()), rows
    assert sum(r["accepted"] for r in rows.values()) >= 201
    assert sum(r["requests"] for r in rows.values()) == data["counters"]["requests"]


def _listening_sockets(port: int) -> int:
    """LISTEN sockets on PORT in this network namespace (/proc/net/tcp and tcp6 list each socket once)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


@pytest.mark.parametrize("engine", ENGINES)
def test_reuseport_gives_each_worker_a_listener_of_its_own(start_server, engine: str) -> None:
    # Spreading alone proves nothing (a shared listener spreads too): count the listening sockets.
    shared = start(start_server, engine, "--workers", "3")
    workers_become(shared, 3)
    assert _listening_sockets(shared.port) == 1
    own = start(start_server, engine, "--workers", "3", "--reuseport")
    workers_become(own, 3)
    assert _listening_sockets(own.port) == 3
    assert own.stats()["counters"]["reuseport"]["tcp_migrate_req"] in (-1, 0, 1)
    os.kill(own.pid, signal.SIGTTOU)  # a worker fewer: its listener closes with it
    wait_for(lambda: _listening_sockets(own.port) == 2, timeout=10, what="one listener per remaining worker")
