"""What only the thread pool does: bounded pool + fast 503, idle connections off the threads, shared fate.

Real `webmodels serve threadpool` subprocesses on 127.0.0.1; the shared conformance suite covers the routes.
"""

from __future__ import annotations

import selectors
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from webmodels.exitcodes import EXIT_CRASH

from .support import Server, wait_for


class Raw:
    """A raw keep-alive HTTP/1.1 connection that reads responses by Content-Length."""

    def __init__(self, srv: Server, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((srv.host, srv.port), timeout=timeout)
        self.buf = b""

    def send(self, *targets: str, close: bool = False) -> None:
        conn = b"Connection: close\r\n" if close else b""
        self.sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (t.encode(), conn) for t in targets))

    def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines[1:])}
        length = int(headers[b"content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def get(self, target: str) -> tuple[int, dict[bytes, bytes], bytes]:
        self.send(target)
        return self.response()

    def eof(self) -> bool:
        """Block until the server closes (True) or sends something (False)."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        self.buf += data
        return data == b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


def in_background(fn, *args):  # type: ignore[no-untyped-def]
    pool = ThreadPoolExecutor(1)
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def counters(srv: Server) -> dict:
    return srv.stats()["counters"]


class Hangs:
    """N requests that each hang a pool thread; one rejected with 503 is sent again.

    A rejection can happen legitimately: a client's previous connection still counts against the pool
    until its thread notices the close.
    """

    def __init__(self, srv: Server, n: int, seconds: int) -> None:
        self.srv, self.target = srv, f"/fault/hang?s={seconds}"
        self.futures = [in_background(srv.get, self.target) for _ in range(n)]

    def refill(self) -> None:
        for i, f in enumerate(self.futures):
            if f.done() and f.result().status_code == 503:
                self.futures[i] = in_background(self.srv.get, self.target)


def test_full_pool_answers_503_fast_and_hung_threads_show_as_busy(start_server) -> None:
    srv = start_server("threadpool", "--threads", "3", "--queue", "0", "--graceful-timeout", "0.5")
    hangs = Hangs(srv, 2, 3)
    # Two hung threads plus the one answering the stats request: the whole pool.
    wait_for(lambda: hangs.refill() or counters(srv)["busy_threads"] == 3, what="two hung threads")
    c = counters(srv)
    assert c["pool_size"] == 3 and c["queued"] == 0
    hangs.futures.append(in_background(srv.get, "/fault/hang?s=3"))
    wait_for(lambda: hangs.refill() or srv.get("/").status_code == 503, timeout=5,
             what="a 503 once all three threads hang")
    t0 = time.monotonic()
    r = srv.get("/")
    assert r.status_code == 503 and r.headers["connection"] == "close"
    assert "busy" in r.json()["error"]
    assert time.monotonic() - t0 < 0.5, "the 503 must not wait for a thread"
    # A finite hang gives its thread back; the counters say so.
    assert all(h.result(timeout=10).status_code == 200 for h in hangs.futures)
    c = counters(srv)
    assert c["busy_threads"] == 1 and c["rejected_503"] >= 2 and c["errors_5xx"] >= 2
    assert c["connection_ends"]["busy"] == c["rejected_503"]  # the policy's 503, counted once, its end said


def test_idle_keepalive_connection_does_not_pin_the_only_thread(start_server) -> None:
    # --queue 1: room for a connection the thread is still letting go of; pinning would still stall it.
    srv = start_server("threadpool", "--threads", "1", "--queue", "1")
    idle = Raw(srv)
    status, _, body = idle.get("/whoami")
    assert status == 200 and b'"thread_name":"pool-1"' in body
    # The connection stays open and idle; another client must still get the one thread, promptly.
    wait_for(lambda: counters(srv)["idle_keepalive"] >= 1, what="the idle connection parked in the selector")
    t0 = time.monotonic()
    with srv.client(timeout=2.0) as other:
        assert other.get("/").status_code == 200
    assert time.monotonic() - t0 < 1.0
    # ... and the idle connection is still alive and served on the same socket.
    assert idle.get("/")[0] == 200
    idle.close()


def test_pipelined_requests_are_answered_in_order_by_one_thread(start_server) -> None:
    srv = start_server("threadpool")
    conn = Raw(srv)
    conn.send("/io?ms=50", "/whoami", "/nope", "/whoami", "/")
    replies = [conn.response() for _ in range(5)]
    assert [r[0] for r in replies] == [200, 200, 404, 200, 200]
    assert replies[0][2] == b'{"waited_ms":50}' and replies[4][2] == b"Hello, world!"
    # One connection with buffered requests stays with its thread until the buffer is empty.
    assert httpx.Response(200, content=replies[1][2]).json()["thread_name"] == \
        httpx.Response(200, content=replies[3][2]).json()["thread_name"]
    conn.close()


def test_slow_head_gets_408_and_silence_a_plain_close(start_server) -> None:
    srv = start_server("threadpool", "--header-timeout", "0.5")
    partial, silent = Raw(srv), Raw(srv)
    partial.sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
    t0 = time.monotonic()
    status, headers, _ = partial.response()
    assert status == 408 and headers[b"connection"] == b"close"
    assert 0.4 < time.monotonic() - t0 < 3.0
    assert partial.eof()
    assert silent.eof() and silent.buf == b"", "a silent connection is closed without a response"
    wait_for(lambda: counters(srv)["errors_4xx"] >= 1, what="the 408 counted")
    partial.close()
    silent.close()


def test_keepalive_idle_timeout_closes_and_zero_closes_after_each_response(start_server) -> None:
    srv = start_server("threadpool", "--keepalive", "0.5")
    conn = Raw(srv)
    assert conn.get("/")[0] == 200
    t0 = time.monotonic()
    assert conn.eof()
    assert 0.4 < time.monotonic() - t0 < 3.0
    conn.close()

    srv0 = start_server("threadpool", "--keepalive", "0")
    conn = Raw(srv0)
    status, headers, _ = conn.get("/")
    assert status == 200 and headers[b"connection"] == b"close"
    assert conn.eof()
    conn.close()


def test_crash_takes_every_in_flight_request_with_it(start_server) -> None:
    srv = start_server("threadpool")
    victims = [in_background(srv.get, "/io?ms=2000") for _ in range(3)]
    wait_for(lambda: counters(srv)["in_flight"] >= 4, what="three requests in flight (+ the stats request)")
    with pytest.raises(httpx.TransportError):
        srv.get("/fault/crash")
    assert srv.wait_exit(10) == EXIT_CRASH
    for v in victims:
        with pytest.raises(httpx.TransportError):
            v.result(timeout=10)


def test_raise_is_a_500_and_the_thread_survives(start_server) -> None:
    srv = start_server("threadpool", "--threads", "1")
    assert srv.get("/fault/raise").status_code == 500
    r = srv.get("/whoami")
    assert r.status_code == 200 and r.json()["thread_name"] == "pool-1"
    assert srv.alive()


def test_counter_loses_updates_unless_locked(start_server) -> None:
    srv = start_server("threadpool")
    clients, each = 16, 20

    def hammer(mode: str) -> int:
        assert srv.get(f"/counter?mode={mode}&op=reset").json()["value"] == 0
        barrier = threading.Barrier(clients)

        def one() -> None:
            with srv.client() as c:
                barrier.wait(5)
                for _ in range(each):
                    assert c.get(f"/counter?mode={mode}&window_ms=2").status_code == 200

        with ThreadPoolExecutor(clients) as pool:
            for f in [pool.submit(one) for _ in range(clients)]:
                f.result(timeout=60)
        return srv.get(f"/counter?mode={mode}&op=read").json()["value"]

    assert hammer("unsafe") < clients * each
    assert hammer("locked") == clients * each


def test_sigterm_closes_idle_connections_and_drains_in_flight(start_server) -> None:
    srv = start_server("threadpool")
    idle = Raw(srv)
    assert idle.get("/")[0] == 200
    slow = in_background(srv.get, "/io?ms=1000")
    wait_for(lambda: counters(srv)["in_flight"] >= 2, what="the slow request in flight")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert idle.eof() and time.monotonic() - t0 < 0.9, "idle connections close at once"
    with pytest.raises(httpx.ConnectError):
        srv.get("/")  # the listener is closed
    r = slow.result(timeout=10)
    assert r.status_code == 200 and r.headers["connection"] == "close"
    assert srv.wait_exit(10) == 0
    assert "shutdown (SIGTERM)" in srv.log and "drained" in srv.log
    idle.close()


def test_sigterm_gives_up_on_a_hung_thread_after_the_graceful_timeout(start_server) -> None:
    srv = start_server("threadpool", "--graceful-timeout", "1")
    in_background(srv.get, "/fault/hang")
    wait_for(lambda: counters(srv)["busy_threads"] >= 2, what="the hung thread")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit(10) == 0
    assert 0.9 < time.monotonic() - t0 < 5.0
    assert "graceful timeout" in srv.log


def test_sigint_stops_without_waiting(start_server) -> None:
    srv = start_server("threadpool")
    slow = in_background(srv.get, "/io?ms=5000")
    wait_for(lambda: counters(srv)["in_flight"] >= 2, what="the slow request in flight")
    t0 = time.monotonic()
    srv.signal(signal.SIGINT)
    assert srv.wait_exit(10) == 0
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(httpx.TransportError):
        slow.result(timeout=10)


def test_more_connections_than_threads_take_turns_and_an_admitted_one_never_gets_503(start_server) -> None:
    """Issue 9 §2: 8 keep-alive connections sending back to back on 2 threads are all served, evenly."""
    srv = start_server("threadpool", "--threads", "2")  # --queue defaults to 2: new ones beyond it would get 503
    n, seconds = 8, 2.0
    conns = []
    for _ in range(n):  # admitted one at a time: each first request finds a free thread or room in the queue
        c = Raw(srv, timeout=10)
        assert c.get("/")[0] == 200
        conns.append(c)
    done = [0] * n
    statuses: set[int] = set()
    stop = time.monotonic() + seconds
    go = threading.Barrier(n)

    def client(i: int) -> None:
        go.wait()
        while time.monotonic() < stop:
            status, headers, _ = conns[i].get("/")
            statuses.add(status)
            if status != 200 or headers.get(b"connection") == b"close":
                return
            done[i] += 1

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(seconds + 10)
    for c in conns:
        c.close()
    ordered = sorted(done)
    median = (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    print(f"thread pool, 2 threads, {n} busy keep-alive connections for {seconds}s: per connection {done} "
          f"(min/median {ordered[0] / median:.2f}), statuses {statuses}, stats {counters(srv)}")
    assert statuses == {200}, "an admitted connection was answered something else (a 503?)"
    assert ordered[0] >= 1, "a connection never got a second turn"
    assert ordered[0] / median >= 0.5, done


def test_a_stop_accepts_what_the_backlog_holds_before_closing_the_listener() -> None:
    """Issue 11 §1, the drain itself (no threads started): 12 connections in the backlog are let in, not reset."""
    from webmodels.config import build_config
    from webmodels.connection import Limits, Policy
    from webmodels.runtime import Runtime
    from webmodels.servers.lifecycle import Lifecycle
    from webmodels.servers.threadpool import ThreadsEngine

    config = build_config("threadpool", {"threads": 2}, {})
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    rt = Runtime(config)
    life = Lifecycle(config, rt, Policy(Limits.from_config(config), rt), alone=True)
    engine = life.engine = ThreadsEngine(config, listener, rt, life)
    clients = [socket.create_connection(listener.getsockname()[:2], timeout=5) for _ in range(12)]
    for c in clients:
        c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.1)  # loopback: the requests are in the kernel by now
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    life.request_stop("SIGTERM")  # the policy drains: admission lets in what was accepted before the stop
    engine.acceptor._drain_queue = True
    engine.acceptor._stop_listening(sel)
    try:
        assert listener.fileno() == -1, "the listener is closed after the drain"
        assert len(engine._new) == 12 and engine.rejected_503 == 0  # all admitted, none refused at a stop
    finally:
        for conn in list(engine._new) + list(engine.acceptor.fresh):
            conn.sock.close()
        for c in clients:
            c.close()
        sel.close()
