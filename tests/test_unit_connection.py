"""The connection policy without sockets: time is a number we pass in, every rule has an exact answer."""

from __future__ import annotations

import json

import pytest

from webmodels import connection as cx
from webmodels.codec import HttpError, Response
from webmodels.config import build_config
from webmodels.connection import ABORT, CLOSE, INF, LINGER, Action, Connection, Limits, Policy

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
GET10 = b"GET / HTTP/1.0\r\n\r\n"
GET10_KA = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
POST_HEAD = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n"
OK = Response(200, b"hi")
T0 = 1000.0  # any monotonic time


class Counts:
    """Stands in for the Runtime: records what the policy counts."""

    def __init__(self) -> None:
        self.finished: list[tuple[int, bool]] = []

    def request_finished(self, status: int, started: bool = True) -> None:
        self.finished.append((status, started))


def make(**limits: object) -> tuple[Connection, Counts]:
    counts = Counts()
    lim = {"header_timeout": 10.0, "keepalive": 5.0, "send_timeout": 30.0, **limits}
    return Policy(Limits(**lim), counts).connection(T0), counts  # type: ignore[arg-type]


def serve_one(conn: Connection, data: bytes, now: float, resp: Response = OK) -> bytes:
    """Receive DATA (one complete request), answer it, report the bytes gone; return what was written."""
    [req] = conn.receive(data, now)
    out = conn.respond(req, resp, now)
    conn.sending(0, now)
    return out


def status_and_close(out: bytes) -> tuple[int, bool]:
    head = out.split(b"\r\n\r\n", 1)[0]
    return int(head.split(b" ", 2)[1]), b"\r\nConnection: close" in head


def error_of(out: bytes) -> str:
    return json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]


# -- which deadline applies -------------------------------------------------------------------------------
def test_fresh_connection_gets_header_timeout_then_a_silent_close() -> None:
    conn, counts = make()
    assert conn.deadline() == (T0 + 10.0, "new")
    assert conn.idle
    assert conn.expire(T0 + 9.99) is None and conn.closing == ""
    assert conn.expire(T0 + 10.0) == Action("new", b"", CLOSE)
    assert conn.closing == CLOSE and counts.finished == []


def test_head_deadline_counts_from_the_heads_first_byte_and_does_not_move() -> None:
    conn, counts = make()
    assert conn.receive(b"GET / HT", T0 + 3) == []
    assert conn.deadline() == (T0 + 13.0, "head")
    assert conn.receive(b"TP/1.1\r\nHost: t\r\n", T0 + 12) == []  # a trickle does not buy time
    assert conn.deadline() == (T0 + 13.0, "head")
    assert conn.expire(T0 + 12.99) is None
    act = conn.expire(T0 + 13.0)
    assert act is not None and act.kind == "head" and act.then == CLOSE
    assert status_and_close(act.reply) == (408, True)
    assert error_of(act.reply) == "request head not received in time"
    assert counts.finished == [(408, False)]
    assert conn.closing == CLOSE  # a 408 does not linger


def test_body_deadline_counts_from_the_heads_end_and_names_the_body() -> None:
    conn, counts = make()
    assert conn.receive(b"POST /echo HTTP/1.1\r\nHost: t\r\n", T0 + 1) == []
    assert conn.deadline() == (T0 + 11.0, "head")
    assert conn.receive(b"Content-Length: 100\r\n\r\n" + b"x" * 10, T0 + 4) == []
    assert conn.deadline() == (T0 + 14.0, "body")
    assert conn.receive(b"x" * 10, T0 + 13) == []  # still a total budget, not an idle timer
    assert conn.deadline() == (T0 + 14.0, "body")
    act = conn.expire(T0 + 14.0)
    assert act is not None and act.kind == "body" and act.then == CLOSE
    assert status_and_close(act.reply) == (408, True)
    assert error_of(act.reply) == "request body not received in time"
    assert counts.finished == [(408, False)]


def test_idle_keepalive_counts_from_the_end_of_the_last_response_then_a_silent_close() -> None:
    conn, counts = make()
    [req] = conn.receive(GET, T0 + 1)
    assert conn.deadline() == (INF, "")  # the server owes a response: the client's clock is stopped
    out = conn.respond(req, OK, T0 + 2)
    assert status_and_close(out) == (200, False)
    assert conn.deadline() == (T0 + 2 + 30.0, "send")  # bytes are on their way
    conn.sending(0, T0 + 3)
    assert conn.deadline() == (T0 + 8.0, "idle")
    assert conn.idle
    assert conn.expire(T0 + 8.0) == Action("idle", b"", CLOSE)
    assert counts.finished == []


def test_a_head_begun_while_the_server_was_busy_counts_from_the_end_of_the_response() -> None:
    conn, _ = make()
    [req] = conn.receive(GET + b"GET / HT", T0 + 1)  # pipelined: one complete, one begun
    assert conn.deadline() == (INF, "")
    conn.respond(req, OK, T0 + 6)
    conn.sending(0, T0 + 7)
    assert conn.deadline() == (T0 + 17.0, "head")


def test_send_deadline_counts_from_the_last_progress_then_aborts() -> None:
    conn, counts = make()
    [req] = conn.receive(GET, T0)
    out = conn.respond(req, Response(200, b"x" * 100_000), T0 + 1)
    conn.sending(len(out) - 1000, T0 + 2)  # some left: progress
    assert conn.deadline() == (T0 + 32.0, "send")
    conn.sending(len(out) - 1000, T0 + 20)  # no progress: no extension
    assert conn.deadline() == (T0 + 32.0, "send")
    assert conn.unsent == len(out) - 1000
    assert conn.expire(T0 + 31.9) is None
    assert conn.expire(T0 + 32.0) == Action("send", b"", ABORT)
    assert conn.closing == ABORT and conn.unsent == 0
    conn.closed(T0 + 32.0)
    assert counts.finished == []


def test_requests_waiting_for_the_handler_have_no_deadline() -> None:
    conn, _ = make()
    a, b = conn.receive(GET + GET, T0)
    assert conn.deadline() == (INF, "") and conn.timeout(T0 + 1e6) is None
    conn.respond(a, OK, T0 + 100)
    conn.sending(0, T0 + 100)
    assert conn.deadline() == (INF, "")  # the second is still owed
    conn.respond(b, OK, T0 + 200)
    conn.sending(0, T0 + 200)
    assert conn.deadline() == (T0 + 205.0, "idle")


def test_timeout_is_seconds_left_never_negative() -> None:
    conn, _ = make()
    assert conn.timeout(T0 + 4) == pytest.approx(6.0)
    assert conn.timeout(T0 + 11) == 0.0


# -- --min-rate ---------------------------------------------------------------------------------------------
def test_min_rate_extends_the_head_deadline_per_byte_capped_at_header_timeout_after_the_last_byte() -> None:
    conn, _ = make(header_timeout=1.0, min_rate=100.0)
    conn.receive(b"GET /", T0)  # the phase starts: 5 bytes = +0.05 s, but the cap is last byte + 1 s
    assert conn.deadline() == (pytest.approx(T0 + 1.0), "head")
    conn.receive(b"a" * 46, T0 + 0.8)  # 51 bytes: +0.51 s → T0 + 1.51, under the cap T0 + 1.8
    assert conn.deadline() == (pytest.approx(T0 + 1.51), "head")
    conn.receive(b"a" * 200, T0 + 1.5)  # 251 bytes: +2.51 s → capped at T0 + 2.5
    assert conn.deadline() == (pytest.approx(T0 + 2.5), "head")
    assert conn.expire(T0 + 2.49) is None
    act = conn.expire(T0 + 2.5)
    assert act is not None and status_and_close(act.reply)[0] == 408


def test_min_rate_a_client_below_the_rate_still_times_out() -> None:
    conn, _ = make(header_timeout=1.0, min_rate=100.0)
    t = T0
    conn.receive(b"GET /", t)
    while conn.expire(t) is None and t < T0 + 10:  # then one byte every 0.25 s = 4 B/s, far below 100 B/s
        t += 0.25
        conn.receive(b"a", t)
    assert t == pytest.approx(T0 + 1.25)  # 10 bytes earned 0.1 s: the first check past T0 + 1.1


def test_min_rate_off_means_no_extension() -> None:
    conn, _ = make(header_timeout=1.0)
    conn.receive(b"GET /" + b"a" * 1000, T0)
    conn.receive(b"a" * 1000, T0 + 0.5)
    assert conn.deadline() == (T0 + 1.0, "head")


def test_min_rate_applies_to_the_body_too() -> None:
    conn, _ = make(header_timeout=1.0, min_rate=1000.0)
    conn.receive(POST_HEAD, T0)
    assert conn.deadline() == (pytest.approx(T0 + 1.0), "body")  # the read that ended the head starts it
    conn.receive(b"x" * 50, T0 + 0.9)  # 50 + len(head) bytes counted at 1000 B/s
    assert conn.deadline() == (pytest.approx(T0 + 1.0 + (len(POST_HEAD) + 50) / 1000), "body")


# -- keep-alive -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, resp_close, limits, drain, keep", [
    (GET, False, {}, False, True),
    (GET_CLOSE, False, {}, False, False),  # the client asks
    (GET10, False, {}, False, False),  # HTTP/1.0 without keep-alive
    (GET10_KA, False, {}, False, True),  # HTTP/1.0 asking for it
    (GET, True, {}, False, False),  # the response asks (Response.close)
    (GET, False, {"keepalive": 0.0}, False, False),  # --keepalive 0
    (GET, False, {}, True, False),  # the server is draining
    (GET, False, {"max_requests": 1}, False, False),  # this process reached --max-requests
], ids=["http11", "client-close", "http10", "http10-keepalive", "response-close", "keepalive-0", "draining",
        "max-requests"])
def test_keep_alive_decision(data: bytes, resp_close: bool, limits: dict, drain: bool, keep: bool) -> None:
    conn, _ = make(**limits)
    if drain:
        conn.policy.drain()
    out = serve_one(conn, data, T0, Response(200, b"hi", close=resp_close))
    assert status_and_close(out) == (200, not keep)
    assert conn.closing == ("" if keep else CLOSE)


def test_keep_alive_is_a_one_way_latch_requests_after_a_closing_one_are_dropped() -> None:
    conn, counts = make()
    first, second = conn.receive(GET_CLOSE + GET, T0)
    out = conn.respond(first, OK, T0)
    assert status_and_close(out) == (200, True)
    assert conn.closing == LINGER  # a request is queued behind it: the client may still be sending
    assert conn.receive(GET, T0 + 0.1) == []  # nothing is parsed any more
    assert counts.finished == []


def test_max_requests_counts_responses_of_the_whole_process() -> None:
    counts = Counts()
    policy = Policy(Limits(max_requests=3), counts)
    a, b = policy.connection(T0), policy.connection(T0)
    assert status_and_close(serve_one(a, GET, T0)) == (200, False)
    assert status_and_close(serve_one(b, GET, T0)) == (200, False)
    assert not policy.exhausted
    assert status_and_close(serve_one(a, GET, T0)) == (200, True)
    assert policy.exhausted and policy.responses == 3


def test_max_requests_tells_whoever_recycles_once_at_the_last_response() -> None:
    policy = Policy(Limits(max_requests=2), Counts())
    calls: list[int] = []
    policy.on_exhausted = lambda: calls.append(policy.responses)
    conn = policy.connection(T0)
    serve_one(conn, GET, T0)
    assert calls == []
    serve_one(policy.connection(T0), GET, T0)
    serve_one(policy.connection(T0), GET, T0)  # a third, already past the limit: not told again
    assert calls == [2]


# -- the rule at a stop: one row per state the connection is in ------------------------------------------------
def test_stop_closes_an_idle_keepalive_connection_at_once() -> None:
    conn, counts = make()
    serve_one(conn, GET, T0)
    assert conn.deadline() == (T0 + 5.0, "idle")
    conn.policy.drain(T0 + 1.0)
    assert conn.deadline() == (T0 + 1.0, "idle")
    assert conn.expire(T0 + 1.0) == Action("idle", b"", CLOSE)
    conn.closed(T0 + 1.0)
    assert conn.end == "stop-idle" and conn.policy.ends == {"stop-idle": 1} and counts.finished == []


def test_stop_lets_a_silent_connection_keep_its_deadline_its_request_may_be_on_the_wire() -> None:
    conn, counts = make()  # accepted at T0, nothing sent
    conn.policy.drain(T0 + 2.0)
    assert conn.deadline() == (T0 + 10.0, "new")
    [req] = conn.receive(GET, T0 + 5.0)  # a client that paused between connect and send
    assert status_and_close(conn.respond(req, OK, T0 + 5.0)) == (200, True)


def test_stop_closes_a_silent_connection_that_never_asks_at_its_header_timeout() -> None:
    conn, counts = make()
    conn.policy.drain(T0 + 2.0)
    assert conn.expire(T0 + 9.9) is None
    assert conn.expire(T0 + 10.0) == Action("new", b"", CLOSE)
    assert conn.end == "stop-silent" and counts.finished == []


def test_stop_lets_a_half_sent_head_keep_its_deadline_then_answers_it_with_close() -> None:
    conn, counts = make(header_timeout=10.0)
    conn.receive(b"GET / HTTP/1.1\r\nHo", T0)
    conn.policy.drain(T0 + 1.0)
    assert conn.deadline() == (T0 + 10.0, "head")
    [req] = conn.receive(b"st: t\r\n\r\n", T0 + 2.0)
    assert status_and_close(conn.respond(req, OK, T0 + 2.0)) == (200, True)
    assert conn.end == "close"


def test_stop_lets_a_half_sent_head_that_never_completes_get_its_408() -> None:
    conn, counts = make(header_timeout=10.0)
    conn.receive(b"GET / HTTP/1.1\r\nHo", T0)
    conn.policy.drain(T0 + 1.0)
    act = conn.expire(T0 + 10.0)
    assert act is not None and act.kind == "head" and act.reply.startswith(b"HTTP/1.1 408")
    assert conn.end == "408" and counts.finished == [(408, False)]


def test_stop_answers_a_request_being_served_with_close() -> None:
    conn, _ = make()
    [req] = conn.receive(GET, T0)
    conn.policy.drain(T0 + 0.5)
    assert conn.deadline() == (INF, "")  # we owe it: no deadline of the client's
    assert status_and_close(conn.respond(req, OK, T0 + 3.0)) == (200, True)


def test_a_forced_stop_says_so() -> None:
    conn, counts = make()
    conn.receive(GET, T0)
    conn.abort(T0 + 30)
    assert conn.end == "forced" and conn.closing == ABORT and counts.finished == []


# -- admission ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("busy, waiting, draining, admitted", [
    (1, 0, False, True),  # a runner is free
    (2, 1, False, True),  # all busy, the line has room
    (2, 2, False, False),  # all busy, the line full: 503
    (2, 2, True, True),  # stopping: what was accepted before is served
    (0, 3, False, True),  # a burst before any runner took its connection: 2 free runners + a queue of 2
    (0, 4, False, False),  # ... and no more: "a runner is free" is no room for a whole burst
    (1, 3, False, False),  # one busy: 1 free runner + 2 in the queue, 3 already waiting
])
def test_admission_rule(busy: int, waiting: int, draining: bool, admitted: bool) -> None:
    policy = Policy(Limits(queue=2), Counts())
    if draining:
        policy.drain(T0)
    assert policy.admits(busy=busy, runners=2, waiting=waiting) is admitted


def test_a_rejected_connection_gets_a_counted_503_and_closes() -> None:
    conn, counts = make()
    out = conn.reject(T0)
    assert status_and_close(out) == (503, True)
    assert conn.closing == CLOSE and conn.end == "busy" and counts.finished == [(503, False)]


def test_peer_eof_with_nothing_queued_closes_after_the_answer() -> None:
    conn, counts = make()
    [req] = conn.receive(GET, T0)
    conn.eof(T0)  # the client half-closed after a full request: still answered, then closed
    assert conn.closing == ""  # a response is owed
    out = conn.respond(req, OK, T0)
    assert status_and_close(out) == (200, True)
    assert conn.closing == CLOSE  # not LINGER: the peer sends nothing more
    assert counts.finished == []


def test_peer_eof_with_two_queued_keeps_alive_until_the_last() -> None:
    conn, _ = make()
    a, b = conn.receive(GET + GET, T0)
    conn.eof(T0)
    assert status_and_close(conn.respond(a, OK, T0)) == (200, False)
    assert status_and_close(conn.respond(b, OK, T0)) == (200, True)


def test_peer_eof_while_idle_closes_at_once() -> None:
    conn, counts = make()
    serve_one(conn, GET, T0)
    conn.eof(T0 + 1)
    assert conn.closing == CLOSE and not conn.lingering and counts.finished == []


def test_peer_eof_while_the_response_is_still_leaving_closes_after_it() -> None:
    conn, _ = make()
    [req] = conn.receive(GET, T0)
    out = conn.respond(req, OK, T0)
    conn.sending(len(out) // 2, T0)
    conn.eof(T0 + 1)
    assert conn.closing == CLOSE and conn.deadline()[1] == "send"
    conn.sending(0, T0 + 2)
    assert conn.deadline() == (INF, "")


# -- accounting -------------------------------------------------------------------------------------------------------
def test_a_refused_request_is_counted_once_and_its_reply_closes_with_a_linger() -> None:
    conn, counts = make()
    [err] = conn.receive(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n", T0)
    assert isinstance(err, HttpError) and err.status == 413
    out = conn.refuse(err, T0)
    assert status_and_close(out) == (413, True)
    assert conn.closing == LINGER
    assert counts.finished == [(413, False)]
    conn.closed(T0 + 1)
    assert counts.finished == [(413, False)]


def test_refusal_after_a_peer_eof_does_not_linger() -> None:
    conn, _ = make()
    [err] = conn.receive(b"\x16\x03\x01garbage\r\n\r\n", T0)
    conn.eof(T0)
    conn.refuse(err, T0)
    assert conn.closing == CLOSE


def test_pipelined_good_requests_come_before_the_error_in_order() -> None:
    conn, counts = make()
    events = conn.receive(GET + b"GET /x HTTP/1.1\r\n\r\n", T0)  # the second has no Host
    assert [type(e).__name__ for e in events] == ["Request", "HttpError"]
    assert status_and_close(conn.respond(events[0], OK, T0)) == (200, False)
    assert status_and_close(conn.refuse(events[1], T0)) == (400, True)
    assert counts.finished == [(400, False)]


def test_eof_mid_request_is_counted_once_as_400() -> None:
    conn, counts = make()
    conn.receive(b"GET / HT", T0)
    conn.eof(T0 + 1)
    assert counts.finished == [(400, False)]
    assert conn.closing == CLOSE
    conn.closed(T0 + 1)
    assert counts.finished == [(400, False)]


def test_reset_mid_request_is_counted_once_as_400() -> None:
    conn, counts = make()
    conn.receive(POST_HEAD + b"xx", T0)
    conn.closed(T0 + 1)  # ECONNRESET: no eof() first
    conn.closed(T0 + 2)
    assert counts.finished == [(400, False)]


def test_a_forced_shutdown_mid_request_is_not_the_clients_fault() -> None:
    conn, counts = make()
    ran: list[int] = []
    [a] = conn.receive(GET + b"GET / HT", T0)  # one answered, one begun
    conn.respond(a, Response(200, after=lambda: ran.append(1)), T0)
    conn.abort(T0 + 1)
    assert conn.closing == ABORT and counts.finished == [] and ran == [1]
    conn.closed(T0 + 1)
    assert counts.finished == []


def test_eof_or_close_between_requests_counts_nothing() -> None:
    conn, counts = make()
    serve_one(conn, GET, T0)
    conn.eof(T0 + 1)
    conn.closed(T0 + 1)
    assert counts.finished == []


def test_a_timeout_is_counted_once_even_when_the_peer_then_vanishes() -> None:
    conn, counts = make(header_timeout=1.0)
    conn.receive(b"GET / HT", T0)
    assert conn.expire(T0 + 1) is not None
    conn.eof(T0 + 1.1)
    conn.closed(T0 + 1.1)
    assert counts.finished == [(408, False)]


def test_input_after_the_server_decided_to_close_is_not_counted() -> None:
    conn, counts = make()
    req, err = conn.receive(GET_CLOSE + b"GET / HT", T0)  # llhttp refuses data after Connection: close
    assert isinstance(err, HttpError)
    conn.respond(req, OK, T0)  # the engine stops here: closing is set, the error is never answered
    assert conn.closing == LINGER
    conn.sending(0, T0)
    conn.closed(T0)
    assert counts.finished == []


# -- lingering close ------------------------------------------------------------------------------------------------------
def test_linger_starts_when_the_reply_has_left_and_ends_at_linger_s() -> None:
    conn, _ = make()
    [err] = conn.receive(POST_HEAD.replace(b"100", b"2000000"), T0)
    conn.refuse(err, T0)
    assert not conn.lingering and conn.deadline()[1] == "send"
    conn.sending(0, T0 + 0.5)
    assert conn.lingering
    assert conn.deadline() == (T0 + 0.5 + cx.LINGER_S, "linger")
    assert conn.receive(b"x" * 65536, T0 + 1) == []
    assert conn.lingering
    assert conn.expire(T0 + 0.5 + cx.LINGER_S) == Action("linger", b"", CLOSE)
    assert not conn.lingering and conn.closing == CLOSE


def test_linger_ends_at_the_peers_eof() -> None:
    conn, _ = make()
    [err] = conn.receive(POST_HEAD.replace(b"100", b"2000000"), T0)
    conn.refuse(err, T0)
    conn.sending(0, T0)
    conn.receive(b"x" * 1000, T0 + 0.1)
    conn.eof(T0 + 0.2)
    assert not conn.lingering and conn.closing == CLOSE


def test_linger_ends_after_linger_bytes() -> None:
    conn, _ = make(linger_bytes=100_000)
    [err] = conn.receive(POST_HEAD.replace(b"100", b"2000000"), T0)
    conn.refuse(err, T0)
    conn.sending(0, T0)
    conn.receive(b"x" * 100_000, T0)
    assert conn.lingering
    conn.receive(b"x", T0)
    assert not conn.lingering and conn.closing == CLOSE


def test_a_clean_close_at_a_request_boundary_does_not_linger() -> None:
    conn, _ = make()
    serve_one(conn, GET_CLOSE, T0)
    assert conn.closing == CLOSE and not conn.lingering


def test_a_close_with_a_partial_request_behind_it_lingers() -> None:
    conn, counts = make()
    [req] = conn.receive(GET + b"POST /echo HT", T0)
    conn.respond(req, Response(200, close=True), T0)
    assert conn.closing == LINGER
    conn.sending(0, T0)
    assert conn.lingering
    conn.closed(T0 + 5)
    assert counts.finished == []  # the server closed: the partial request is not the client's fault
    assert not conn.lingering


# -- Response.after ---------------------------------------------------------------------------------------------------------
def test_after_runs_once_when_the_bytes_have_left() -> None:
    conn, _ = make()
    ran: list[float] = []
    [req] = conn.receive(GET, T0)
    conn.respond(req, Response(202, b"bye", close=True, after=lambda: ran.append(1)), T0)
    assert ran == []
    conn.sending(10, T0)
    assert ran == []
    conn.sending(0, T0 + 0.1)
    assert ran == [1]
    conn.closed(T0 + 0.2)
    assert ran == [1]


def test_after_runs_when_the_connection_is_gone_first() -> None:
    conn, _ = make()
    ran: list[int] = []
    [req] = conn.receive(GET, T0)
    conn.respond(req, Response(202, after=lambda: ran.append(1)), T0)
    conn.closed(T0 + 0.1)
    assert ran == [1]


def test_after_waits_at_most_after_wait_for_stuck_bytes() -> None:
    conn, _ = make()
    ran: list[int] = []
    [req] = conn.receive(GET, T0)
    out = conn.respond(req, Response(202, b"x" * 1000, after=lambda: ran.append(1)), T0)
    conn.sending(len(out), T0)
    assert conn.deadline() == (T0 + cx.AFTER_WAIT, "after")
    assert conn.expire(T0 + cx.AFTER_WAIT - 0.01) is None and ran == []
    assert conn.expire(T0 + cx.AFTER_WAIT) is None and ran == [1]
    assert conn.deadline() == (T0 + 30.0, "send")  # back to the send deadline
    conn.sending(0, T0 + 2)
    assert ran == [1]


def test_after_runs_when_the_send_times_out() -> None:
    conn, _ = make(send_timeout=0.5)
    ran: list[int] = []
    [req] = conn.receive(GET, T0)
    out = conn.respond(req, Response(202, b"x", after=lambda: ran.append(1)), T0)
    conn.sending(len(out), T0)
    assert conn.expire(T0 + 0.5) == Action("send", b"", ABORT)
    assert ran == [1]


def test_a_failing_after_hook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    conn, _ = make()

    def boom() -> None:
        raise RuntimeError("boom")

    serve_one(conn, GET, T0, Response(200, after=boom))
    assert "Response.after hook failed" in caplog.text


# -- the engines' questions -------------------------------------------------------------------------------------------------
def test_idle_is_false_while_anything_is_asked_owed_or_unsent() -> None:
    conn, _ = make()
    assert conn.idle
    conn.receive(b"GET", T0)
    assert not conn.idle
    conn, _ = make()
    [req] = conn.receive(GET, T0)
    assert not conn.idle
    out = conn.respond(req, OK, T0)
    assert not conn.idle
    conn.sending(len(out), T0)
    assert not conn.idle
    conn.sending(0, T0)
    assert conn.idle


def test_limits_from_config() -> None:
    cfg = build_config("eventloop", {"header_timeout": "2", "keepalive": "3", "send_timeout": "4",
                                     "min_rate": "500"}, {})
    assert Limits.from_config(cfg) == Limits(header_timeout=2.0, keepalive=3.0, send_timeout=4.0, min_rate=500.0,
                                             queue=cfg.queue)
    pre = build_config("prefork", {"max_requests": "100"}, {})
    assert Limits.from_config(pre, max_requests=107).max_requests == 107
    assert Limits.from_config(pre).max_requests == 100
    assert (pre.send_timeout, pre.min_rate) == (30.0, 0.0)  # the defaults


def test_the_module_stays_sans_io() -> None:
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(cx))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"socket", "asyncio", "selectors", "select", "time"}, imported
