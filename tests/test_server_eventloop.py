"""The event loop's own behaviour, against a real `webmodels serve eventloop` on 127.0.0.1.

What every model shares (routes, limits, error statuses) is the conformance suite's job; these tests are
about what one thread and one loop imply: in-order pipelining, timers swept by the loop, flow control,
a hung handler blocking everyone, the watchdog, shared-fate crashes, and the shutdown story.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import psutil
import pytest

from webmodels import app
from webmodels.codec import Request, RequestParser, Response
from webmodels.config import build_config
from webmodels.exitcodes import EXIT_CRASH, EXIT_WATCHDOG
from webmodels.runtime import Runtime

from .support import Conn, Server, wait_for
from .support.raw import request

LOOPS = ("uvloop", "asyncio")


@pytest.fixture
def conns():
    opened: list[Conn] = []

    def open_conn(srv: Server, **kw: object) -> Conn:
        conn = Conn(srv, **{"timeout": 10.0, **kw})  # type: ignore[arg-type]
        opened.append(conn)
        return conn

    yield open_conn
    for conn in opened:
        conn.close()


# -- the fast path, without sockets ----------------------------------------------------------------------------
def _request(target: str) -> Request:
    (req,) = RequestParser().feed(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert isinstance(req, Request)
    return req


def test_dispatch_fast_answers_plain_routes_inline_and_resumes_waiting_ones_once() -> None:
    import asyncio

    rt = Runtime(build_config("eventloop", {}, environ={}))
    resp = app.dispatch_fast(_request("/"), rt)
    assert isinstance(resp, Response) and resp.body == b"Hello, world!"
    assert (rt.requests, rt.in_flight) == (1, 0)
    assert isinstance(app.dispatch_fast(_request("/nope"), rt), Response)
    assert rt.errors_4xx == 1

    app.COUNTERS["locked"] = 0
    pending = app.dispatch_fast(_request("/counter?mode=locked&window_ms=0"), rt)  # yields Acquire first
    assert not isinstance(pending, Response) and rt.in_flight == 1
    resp = asyncio.run(pending)  # type: ignore[arg-type]
    assert json.loads(resp.body)["value"] == 1  # resumed where it stopped, not run a second time
    assert (rt.requests, rt.in_flight, rt.errors_5xx) == (3, 0, 0)


# -- the connection: pipelining, keep-alive, flow control ---------------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_requests_are_answered_in_order(start_server, conns, loop: str) -> None:
    srv = start_server("eventloop", "--loop", loop)
    assert f"loop={loop}" in srv.log
    conn = conns(srv)
    # The first one waits on an effect (a task), the others are answered inline: order must still hold.
    conn.send(request("/io?ms=150") + request("/") + request("/bytes?kb=2"))
    first, second, third = conn.read_reply(), conn.read_reply(), conn.read_reply()
    assert (first.status, first.json()) == (200, {"waited_ms": 150})
    assert (second.status, second.body) == (200, b"Hello, world!")
    assert (third.status, len(third.body)) == (200, 2048)
    assert conn.call("/").status == 200  # and the connection is still usable


def test_deep_pipeline_pauses_reading_and_loses_nothing(start_server, conns) -> None:
    srv = start_server("eventloop")
    conn = conns(srv)
    n = 60  # several times the queue limit: reading is paused and resumed along the way
    conn.send(b"".join(request(f"/io?ms={i % 3}") for i in range(n)))
    waited = [conn.read_reply().json()["waited_ms"] for _ in range(n)]
    assert waited == [i % 3 for i in range(n)]


def test_keep_alive_connection_is_reused(start_server, conns) -> None:
    srv = start_server("eventloop")
    conn = conns(srv)
    pids = {conn.call("/whoami").json()["pid"] for _ in range(5)}
    assert pids == {srv.pid}
    counters = conn.call("/_lab/stats").json()["counters"]
    assert counters["connections"] == 1 and counters["requests"] == 5
    reply = conn.call("/", "Connection: close\r\n")
    assert reply.headers.get("connection") == "close"
    assert conn.closed(5) == b""


def test_keepalive_zero_closes_after_each_response(start_server, conns) -> None:
    srv = start_server("eventloop", "--keepalive", "0")
    conn = conns(srv)
    reply = conn.call("/")
    assert reply.status == 200 and reply.headers.get("connection") == "close"
    assert conn.closed(5) == b""


def test_idle_keep_alive_connection_is_closed_after_keepalive(start_server, conns) -> None:
    srv = start_server("eventloop", "--keepalive", "0.5")
    conn = conns(srv)
    assert conn.call("/").status == 200
    t0 = time.monotonic()
    assert conn.closed(5) == b""  # closed without a word
    assert 0.4 <= time.monotonic() - t0 < 3


def test_large_response_to_a_slow_reader_arrives_whole(start_server, conns) -> None:
    srv = start_server("eventloop")
    slow = conns(srv, rcvbuf=16 * 1024)
    slow.send(request("/bytes?kb=10240") * 2 + request("/"))
    # While SLOW reads nothing its transport is paused for writing; the loop keeps serving others.
    wait_for(lambda: srv.stats()["counters"]["requests"] >= 1, what="the first 10 MiB response to start")
    t0 = time.monotonic()
    assert srv.get("/").status_code == 200
    assert time.monotonic() - t0 < 2
    for _ in range(2):
        reply = slow.read_reply()
        assert reply.status == 200 and len(reply.body) == 10240 * 1024 and reply.body.count(b"x") == len(reply.body)
    assert slow.read_reply().body == b"Hello, world!"


# -- timers ------------------------------------------------------------------------------------------------------
def test_incomplete_head_gets_408_and_close(start_server, conns) -> None:
    srv = start_server("eventloop", "--header-timeout", "0.5")
    conn = conns(srv)
    conn.send(b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    t0 = time.monotonic()
    data = conn.closed(5)
    assert data is not None and data.startswith(b"HTTP/1.1 408 ")
    assert 0.4 <= time.monotonic() - t0 < 3


def test_silent_connection_is_closed_without_a_reply(start_server, conns) -> None:
    srv = start_server("eventloop", "--header-timeout", "0.5")
    conn = conns(srv)
    t0 = time.monotonic()
    assert conn.closed(5) == b""
    assert 0.4 <= time.monotonic() - t0 < 3
    assert srv.stats()["counters"]["errors_4xx"] == 0  # nothing was asked, so nothing failed


# -- a blocked loop blocks everyone; the watchdog notices -----------------------------------------------------------
def test_hung_handler_blocks_every_other_request(start_server, conns) -> None:
    srv = start_server("eventloop")
    hang = conns(srv)
    hang.send(request("/fault/hang?s=2"))
    wait_for(lambda: "fault: /fault/hang" in srv.log, what="the hang to start")
    latencies: list[float] = []

    def hello() -> None:
        t0 = time.monotonic()
        if srv.get("/").status_code == 200:
            latencies.append(time.monotonic() - t0)

    clients = [threading.Thread(target=hello) for _ in range(3)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(15)
    assert len(latencies) == 3 and min(latencies) >= 1.0, latencies  # all waited for the one hung handler
    assert hang.read_reply().json() == {"hung_s": 2}
    counters = srv.stats()["counters"]
    assert counters["loop_lag_max_ms"] >= 1800, counters
    # "now" recovers on the next tick; the recent max keeps the evidence
    wait_for(lambda: srv.stats()["counters"]["loop_lag_ms"] < 500, what="the loop lag to recover")
    assert srv.stats()["counters"]["loop_lag_max_ms"] >= 1800


def test_watchdog_exits_when_the_loop_stalls(start_server, conns) -> None:
    srv = start_server("eventloop", "--watchdog", "1")
    assert srv.get("/").status_code == 200
    hang = conns(srv)
    t0 = time.monotonic()
    hang.send(request("/fault/hang?s=30"))
    assert srv.wait_exit(timeout=10) == EXIT_WATCHDOG
    assert time.monotonic() - t0 < 5
    wait_for(lambda: "watchdog: the event loop has not ticked" in srv.log, timeout=5, what="watchdog log line")


def test_watchdog_leaves_a_busy_but_healthy_loop_alone(start_server) -> None:
    srv = start_server("eventloop", "--watchdog", "1")
    with srv.client() as c:
        for _ in range(3):
            assert c.get("/io?ms=400").status_code == 200  # waiting is not stalling: the loop keeps ticking
    assert srv.alive()


# -- shared fate and shutdown ----------------------------------------------------------------------------------------
def test_crash_takes_every_in_flight_request_with_it(start_server, conns) -> None:
    srv = start_server("eventloop")
    victim = conns(srv)
    victim.send(request("/io?ms=2000"))
    wait_for(lambda: srv.in_flight() >= 1, what="the /io request to be in flight")
    crasher = conns(srv)
    crasher.send(request("/fault/crash"))
    assert srv.wait_exit(timeout=10) == EXIT_CRASH
    assert victim.closed(5) == b""  # no reply, ever
    assert crasher.closed(5) == b""


def test_sigterm_drains_in_flight_then_exits_0(start_server, conns) -> None:
    srv = start_server("eventloop")
    idle = conns(srv)
    assert idle.call("/").status == 200  # an idle keep-alive connection: closed at once on SIGTERM
    busy = conns(srv)
    busy.send(request("/io?ms=3000"))  # 3 s: still in flight at the TERM however slow the poll below is
    wait_for(lambda: srv.in_flight() >= 1, what="the /io request to be in flight")
    srv.signal(signal.SIGTERM)
    assert idle.closed(0.8) == b""  # well before the in-flight request is done
    reply = busy.read_reply()
    assert (reply.status, reply.json()) == (200, {"waited_ms": 3000})
    assert reply.headers.get("connection") == "close"
    assert srv.wait_exit(timeout=10) == 0
    srv.said("shutdown (SIGTERM): stop accepting; 1 in flight")
    srv.said("shutdown: drained in")


def test_sigterm_forces_what_outlives_the_graceful_timeout(start_server, conns) -> None:
    srv = start_server("eventloop", "--graceful-timeout", "0.5")
    busy = conns(srv)
    busy.send(request("/io?ms=20000"))
    wait_for(lambda: srv.in_flight() >= 1, what="the /io request to be in flight")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit(timeout=10) == 0
    assert time.monotonic() - t0 < 3
    assert busy.closed(5) == b""
    srv.said("graceful timeout after")


def test_sigint_stops_at_once(start_server, conns) -> None:
    srv = start_server("eventloop")
    busy = conns(srv)
    busy.send(request("/io?ms=20000"))
    wait_for(lambda: srv.in_flight() >= 1, what="the /io request to be in flight")
    t0 = time.monotonic()
    srv.signal(signal.SIGINT)
    assert srv.wait_exit(timeout=10) == 0
    assert time.monotonic() - t0 < 2
    assert busy.closed(5) == b""


def test_a_client_that_pipelines_without_reading_is_held_to_a_bounded_cost(start_server) -> None:
    # Flow control: once its answers pile up (pause_writing) the loop stops reading that client, so what the client
    # can push is bounded by buffers, not by its patience. Measured: ~9,000 requests and ~33 MB, then flat; a loop
    # that never pauses read 150,000 requests into 124 MB and kept growing.
    srv = start_server("eventloop")
    proc = psutil.Process(srv.pid)
    rss0 = proc.memory_info().rss
    s = socket.create_connection((srv.host, srv.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # we never read: keep our own buffer small
    s.setblocking(False)
    chunk = request("/bytes?kb=4") * 64
    sent, deadline = 0, time.monotonic() + 4.0
    try:
        while time.monotonic() < deadline:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        answered = srv.stats()["counters"]["requests"]
        grown_mb = (proc.memory_info().rss - rss0) / 2**20
        print(f"pipelined without reading for 4 s: sent {sent / len(chunk) * 64:.0f} requests, server answered "
              f"{answered}, RSS +{grown_mb:.1f} MB")
        assert answered < 30_000 and grown_mb < 40
    finally:
        s.close()
