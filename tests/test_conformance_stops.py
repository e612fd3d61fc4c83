"""Nothing a client established is lost when a server stops, reloads or recycles — on every configuration.

SIGTERM on every configuration of the table (support.CONFIGS, plus --reuseport under the master): each request
whose connection was established before the signal is answered. Then the paths where a listen queue can be
reset by the wrong close: the threads engine's backlog at a stop, the loop engine's listen queue while a handler
blocks it, SIGHUP and --max-requests recycling under load (shared listener and --reuseport), and the --reuseport
window measured with the rhythm that exposed it (issue 20). Clients are real threads on fresh connections.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Callable

import httpx
import pytest

from .support import CONFIGS, FreshClients, Server, children, wait_for
from .support.raw import request

# More clients than workers/threads, each on a fresh connection: some wait in a queue at the signal (a bounded
# pool's, with room for every client: this is about the stop, not admission's 503; else the kernel's backlog).
QUEUED = {"threads": ("--threads", "2", "--queue", "16"), "gevent": ("--greenlets", "2", "--queue", "16")}
SIGTERM_CONFIGS = [pytest.param(c.argv(*QUEUED.get(c.engine, ())), id=c.id) for c in CONFIGS.values()] + [
    pytest.param(c.argv("--reuseport", *QUEUED.get(c.engine, ())), id=f"{c.id}-reuseport")
    for c in CONFIGS.values() if c.id in ("prefork", "hybrid-loop")]


@pytest.mark.parametrize("argv", SIGTERM_CONFIGS)
def test_sigterm_loses_no_request_whose_connection_was_established_before_it(start_server,
                                                                              argv: tuple[str, ...]) -> None:
    srv = start_server(*argv, "--graceful-timeout", "10")
    serving(srv)
    clients = FreshClients(srv, 8, "/io?ms=300", stop_on_refused=True)
    wait_for(lambda: len(clients.results) >= 8, timeout=10, what="8 requests answered before the signal")
    t_signal = time.monotonic()
    srv.signal(signal.SIGTERM)
    clients.stop()
    srv.wait_exit(15)
    before = clients.answered(before=t_signal)
    lost = before.count(False)
    print(f"{' '.join(argv)}: SIGTERM lost {lost} of {len(before)} requests established before it")
    assert len(before) >= 8 and lost == 0, f"{lost} of {len(before)} lost"


# -- the threads engine: SIGHUP and recycling as a worker; the backlog it holds at a stop ------------------------
@pytest.mark.parametrize("how", ["SIGHUP", "recycling"])
def test_threads_workers_lose_nothing_established_before_a_reload_or_recycle(start_server, how: str) -> None:
    # 10 clients on 2 threads per worker, each on a fresh connection: at any instant some wait in the backlog.
    recycle = ("--max-requests", "15", "--max-requests-jitter", "5") if how == "recycling" else ()
    srv = start_server("hybrid-threads", "--workers", "2", "--threads", "2", "--queue", "16", *recycle,
                       "--graceful-timeout", "10")
    first = srv.workers_become(2)
    clients = FreshClients(srv, 10)
    wait_for(lambda: len(clients.results) >= 10, timeout=10, what="the clients under way")
    if how == "SIGHUP":
        srv.signal(signal.SIGHUP)
        srv.workers_become(2, timeout=15, exclude=first)
    else:  # each worker recycles every 15–20 requests: several times, under load
        wait_for(lambda: srv.counters()["worker_exits"]["recycled"] >= 4, timeout=15, what="4 recycles under load")
    time.sleep(0.5)  # keep going while the new workers take over
    t_end = time.monotonic()
    clients.stop()
    before = clients.answered(before=t_end)  # the server never stopped listening
    lost = before.count(False)
    print(f"hybrid-threads {how}: lost {lost} of {len(before)} requests established before it")
    assert len(before) >= 10 and lost == 0, f"{lost} of {len(before)} lost"


@pytest.mark.parametrize("argv", [CONFIGS["threadpool"].argv("--threads", "2", "--queue", "16"),
                                  CONFIGS["hybrid-threads"].argv("--workers", "1", "--threads", "2", "--queue", "16",
                                                                 "--reuseport")],
                         ids=["threadpool", "hybrid-threads-reuseport"])
def test_threads_engine_serves_the_backlog_it_holds_at_sigterm(start_server, argv: tuple[str, ...]) -> None:
    # Frozen (SIGSTOP), the process cannot accept: the kernel completes 12 handshakes into its listen backlog and
    # takes the requests. SIGTERM, then SIGCONT: the engine must answer all 12, not reset them with the listener.
    # Whether the acceptor sees them before or after the stop is a race here (main answered 4 of 12 with
    # --threads 2 --queue 2); tests/test_server_threadpool.py drives the drain itself. (--queue 16: room for all
    # 12 at admission.) With --reuseport: the worker's own listener, no sibling or master to inherit its backlog.
    srv = start_server(*argv, "--graceful-timeout", "10")
    assert srv.get("/").status_code == 200
    alone = srv.model == "threadpool"
    pid = srv.pid if alone else srv.stats()["per_worker"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    socks = []
    try:
        for _ in range(12):
            s = socket.create_connection((srv.host, srv.port), timeout=15)
            s.sendall(request("/io?ms=50", "Connection: close\r\n"))
            socks.append(s)
        os.kill(pid, signal.SIGTERM) if alone else srv.signal(signal.SIGTERM)
        time.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGCONT)
    answered = 0
    for s in socks:
        with s:
            try:
                answered += s.recv(100).startswith(b"HTTP/1.1 200")
            except OSError:
                pass
    print(f"{srv.model}: {answered} of 12 connections queued in the backlog at SIGTERM answered")
    assert answered == 12


# -- the loop engine: what waits in the listen queue, at a stop, a reload and recycling ----------------------------
# The loop accepts as fast as it can, so its listen queue fills only while a handler blocks it: the clients
# ask for CPU work (/cpu), so at the signal a dozen connections wait in the kernel's queue, already sent.
@pytest.mark.parametrize("argv", [CONFIGS["eventloop"].argv(), CONFIGS["hybrid-loop"].argv(),
                                  CONFIGS["hybrid-loop"].argv("--reuseport")],
                         ids=["eventloop", "hybrid-loop", "hybrid-loop-reuseport"])
def test_loop_engine_sigterm_serves_what_waits_in_the_listen_queue(start_server, argv: tuple[str, ...]) -> None:
    srv = start_server(*argv, "--graceful-timeout", "10")
    clients = FreshClients(srv, 24, "/cpu?ms=20")
    wait_for(lambda: len(clients.results) >= 24, timeout=10, what="the clients under way")
    t_signal = time.monotonic()
    srv.signal(signal.SIGTERM)
    time.sleep(0.05)  # whoever connects from now on, connects after the signal
    clients.stop()
    assert srv.wait_exit(15) == 0
    before = clients.answered(before=t_signal)
    lost = before.count(False)
    print(f"{' '.join(argv)}: SIGTERM lost {lost} of {len(before)} requests established before it")
    assert len(before) >= 24 and lost == 0, f"{lost} of {len(before)} lost"


@pytest.mark.parametrize("flags", [(), ("--reuseport",)], ids=["shared", "reuseport"])
def test_hybrid_loop_sighup_loses_no_request(start_server, flags: tuple[str, ...]) -> None:
    srv = start_server("hybrid-loop", "--workers", "2", "--graceful-timeout", "10", *flags)
    old = srv.workers_become(2)
    clients = FreshClients(srv, 24, "/cpu?ms=5")
    wait_for(lambda: len(clients.results) >= 24, timeout=10, what="the clients under way")
    srv.signal(signal.SIGHUP)
    wait_for(lambda: len(children(srv.pid) - old) == 2 and not children(srv.pid) & old, timeout=15,
             what="two fresh workers, the old ones gone")
    time.sleep(0.5)
    results = clients.stop().answered()
    lost = results.count(False)
    print(f"hybrid-loop {flags}: SIGHUP lost {lost} of {len(results)} requests")
    assert len(results) >= 50 and lost == 0, f"{lost} of {len(results)} lost"


@pytest.mark.parametrize("flags", [(), ("--reuseport",)], ids=["shared", "reuseport"])
def test_hybrid_loop_recycling_under_load_loses_no_request(start_server, flags: tuple[str, ...]) -> None:
    srv = start_server("hybrid-loop", "--workers", "2", "--max-requests", "40", "--graceful-timeout", "10", *flags)
    first = srv.workers_become(2)
    clients = FreshClients(srv, 24, "/cpu?ms=5")
    seen: set[int] = set(first)

    def recycled_a_few() -> bool:
        seen.update(children(srv.pid))
        return len(seen) >= 6  # each of the two first workers recycled at least twice

    wait_for(recycled_a_few, timeout=30, interval=0.05, what="workers recycled under load")
    results = clients.stop().answered()
    lost = results.count(False)
    print(f"hybrid-loop {flags}: recycling ({len(seen)} workers seen) lost {lost} of {len(results)} requests")
    assert len(results) >= 100 and lost == 0, f"{lost} of {len(results)} lost"


# -- the sync engine: SIGHUP and recycling under load ----------------------------------------------------------------
def serving(srv: Server) -> None:
    """Wait until 10 fresh connections in a row are answered (with --reuseport: every worker listens)."""
    def ten() -> bool:
        with httpx.Client(base_url=srv.url, timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            return all(c.get("/").status_code == 200 for _ in range(10))
    wait_for(ten, timeout=10, what="every worker serving")


def load(srv: Server, seconds: float, during: Callable[[], None] | None = None, at: float = 0.0,
         clients: int = 8, pause: float = 0.05) -> tuple[list[bool], int]:
    """CLIENTS fresh-connection clients for SECONDS; call DURING at AT seconds; (answered per request, refused).

    Each client sends its request PAUSE seconds after connecting, so a stopping worker often holds an accepted
    connection with no request yet: it must wait for the request and answer it, not drop it.
    """
    fresh = FreshClients(srv, clients, pause=pause)
    if during is not None:
        time.sleep(at)
        during()
    time.sleep(max(0.0, seconds - at))
    fresh.stop()
    return fresh.answered(), fresh.refused


@pytest.mark.parametrize("flags", [(), ("--reuseport",)], ids=["shared", "reuseport"])
def test_prefork_sighup_under_load_loses_nothing(start_server, flags: tuple[str, ...]) -> None:
    # Replaced workers finish what they hold and drain nothing away: with a shared listener the new ones
    # accept from the same queue; with --reuseport each old worker drains its own listener before closing it.
    srv = start_server("prefork", "--workers", "2", *flags)
    serving(srv)
    # as many clients as workers, each pausing 0.3 s before its request: at the HUP, the workers most likely
    # hold a connection whose request has not come yet
    results, refused = load(srv, 3.0, lambda: srv.signal(signal.SIGHUP), at=1.0, clients=2, pause=0.3)
    print(f"prefork {' '.join(flags)} SIGHUP under load: {results.count(False)} of {len(results)} failed, "
          f"{refused} connections refused")
    assert len(results) >= 10 and results.count(False) == 0
    wait_for(lambda: srv.counters()["worker_exits"]["clean"] == 2, timeout=5, what="2 workers replaced")


@pytest.mark.parametrize("flags", [(), ("--reuseport",)], ids=["shared", "reuseport"])
def test_prefork_max_requests_recycling_under_load_loses_nothing(start_server, flags: tuple[str, ...]) -> None:
    # (with --reuseport and both workers recycling at once, there is a moment with no listener at all:
    # connections are refused then — new ones, a client retries them; none established is lost)
    srv = start_server("prefork", "--workers", "2", "--max-requests", "5", *flags)
    serving(srv)
    results, refused = load(srv, 3.0, clients=3)
    # Our own stats poll is a fresh connection too; with --reuseport it can land in the documented window
    # (hashed to a retiring worker's listener between its last empty accept and its close: a reset). Retry it.
    recycled = wait_for(lambda: srv.counters()["worker_exits"]["recycled"] + 1, timeout=10,
                        what="the server's stats") - 1
    print(f"prefork {' '.join(flags)} --max-requests 5 under load: {results.count(False)} of {len(results)} "
          f"failed, {refused} connections refused, {recycled} recycles")
    assert len(results) >= 30 and results.count(False) == 0
    assert recycled >= 2


# -- issue 20: the --reuseport window, measured with the arrival rhythm that exposed it ----------------------------
# A removed worker's listener closes; it drains it first and closes it itself, so what remains is the µs between its
# last empty accept and its close: at most this many lost per hundred answered (measured: 0 in 5 × 8 s runs).
REMOVAL_BOUND_PER_100 = 1


def _check_window(result: dict) -> None:
    for label, counts in result["runs"].items():
        event, listener = label.split()
        print(f"tcp_migrate_req={result['migrate_req']} {event} {listener}: {counts}")
        assert counts["answered"] >= 20, (label, counts)
        if listener == "shared" or event in ("recycle", "hup") or result["migrate_req"] == 1:
            assert counts["lost"] == 0, (label, counts)  # nothing closes, or the kernel migrates what does
        else:
            assert counts["lost"] <= max(1, counts["answered"] * REMOVAL_BOUND_PER_100 // 100), (label, counts)


def test_reuseport_window_recycles_and_hups_lose_nothing_a_removal_only_without_migration() -> None:
    """Steady fresh connections (3 clients, 20 ms apart) through recycles, SIGHUPs and SIGTTOUs: with migration in a
    network namespace of our own 0 lost everywhere; without it, 0 but for a removed worker's listener (its bound)."""
    from webmodels.bench.scenarios import reuseport as window

    if (why := window.can_unshare()):
        if os.environ.get("CI"):
            pytest.skip(f"{why}: CI runs this as root, in network namespaces of its own")
        _check_window(window.measure_all(2.5))  # this namespace's setting only
        return
    for migrate in (1, 0):
        result = window.measure_in_namespace(migrate, 2.5)
        assert result["migrate_req"] == migrate
        _check_window(result)
