"""The sans-IO codec, from raw-request fixture files (tests/requests/*.http, bytes exactly as on the wire)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from webmodels import codec
from webmodels.codec import HttpError, Request, RequestParser, Response

REQUESTS = Path(__file__).parent / "requests"


def raw(name: str) -> bytes:
    return (REQUESTS / name).read_bytes()


def feed_all(data: bytes, parser: RequestParser | None = None) -> list[Request | HttpError]:
    return (parser or RequestParser()).feed(data)


def feed_bytewise(data: bytes, parser: RequestParser | None = None) -> list[Request | HttpError]:
    parser = parser or RequestParser()
    out: list[Request | HttpError] = []
    for i in range(len(data)):
        out += parser.feed(data[i:i + 1])
    return out


def summary(events: list[Request | HttpError]) -> list[tuple]:
    """A comparable view of events: requests by content, errors by status."""
    return [("error", e.status) if isinstance(e, HttpError) else
            (e.method, e.target, e.path, e.query, e.headers, e.body, e.version, e.keep_alive) for e in events]


# -- the fixtures themselves --------------------------------------------------------------------------------
def test_fixtures_keep_their_crlf_line_endings() -> None:
    # A checkout that converted line endings would make every "good" fixture a malformed request.
    for name in ("get.http", "pipelined.http", "chunked_post.http", "http10_keepalive.http"):
        data = raw(name)
        assert b"\r\n\r\n" in data, name
        assert data.count(b"\n") == data.count(b"\r\n"), f"{name} has a bare LF"
    assert (REQUESTS / ".gitattributes").read_text().find("-text") > 0


# -- good requests -------------------------------------------------------------------------------------------
def test_good_get() -> None:
    events = feed_all(raw("get.http"))
    assert len(events) == 1
    req = events[0]
    assert isinstance(req, Request)
    assert req.method == "GET"
    assert req.target == "/io?ms=5&x=a%20b"
    assert req.path == "/io"
    assert req.query == {"ms": "5", "x": "a b"}
    assert req.version == "1.1"
    assert req.keep_alive is True
    assert req.body == b""
    assert req.header(b"host") == b"lab.test"
    assert req.header(b"USER-AGENT") == b"fixture/1"
    assert req.header(b"x-missing") is None
    assert [k for k, _ in req.headers] == [b"Host", b"User-Agent", b"Accept"]


def test_parser_state_between_requests() -> None:
    parser = RequestParser()
    assert parser.idle and not parser.in_head and not parser.failed
    data = raw("get.http")
    assert parser.feed(data[:10]) == []
    assert parser.in_head and not parser.idle
    events = parser.feed(data[10:])
    assert len(events) == 1 and isinstance(events[0], Request)
    assert parser.idle and not parser.in_head
    assert parser.eof() is None  # a clean close between requests is not an error
    # the same parser serves the next request on a keep-alive connection
    events = parser.feed(data)
    assert len(events) == 1 and isinstance(events[0], Request)


def test_pipelined_pair_in_order() -> None:
    events = feed_all(raw("pipelined.http"))
    assert [(e.method, e.path) for e in events] == [("GET", "/whoami"), ("GET", "/counter")]
    first, second = events
    assert first.keep_alive is True
    assert second.query == {"mode": "locked"} and second.keep_alive is False


def test_request_then_partial_next_one() -> None:
    data = raw("pipelined.http")
    cut = data.index(b"GET /counter") + 7
    parser = RequestParser()
    events = parser.feed(data[:cut])
    assert [e.path for e in events] == ["/whoami"]
    assert parser.in_head
    events = parser.feed(data[cut:])
    assert [e.path for e in events] == ["/counter"]


def test_chunked_post() -> None:
    events = feed_all(raw("chunked_post.http"))
    assert len(events) == 1
    req = events[0]
    assert isinstance(req, Request)
    assert (req.method, req.path, req.body) == ("POST", "/echo", b"hello, world")
    assert req.header(b"content-type") == b"text/plain"
    assert req.keep_alive is True


def test_post_with_content_length() -> None:
    (req,) = feed_all(raw("post_content_length.http"))
    assert isinstance(req, Request)
    assert json.loads(req.body) == {"a": [1, 2]}


@pytest.mark.parametrize("name, version, keep_alive", [
    ("http10.http", "1.0", False),  # HTTP/1.0 closes unless asked otherwise, and needs no Host
    ("http10_keepalive.http", "1.0", True),  # "Connection: Keep-Alive" (any case) keeps it open
    ("http11_close.http", "1.1", False),
    ("get.http", "1.1", True),  # HTTP/1.1 keeps it open by default
])
def test_keep_alive_semantics(name: str, version: str, keep_alive: bool) -> None:
    (req,) = feed_all(raw(name))
    assert isinstance(req, Request)
    assert (req.version, req.keep_alive) == (version, keep_alive)


def test_options_asterisk_is_a_request_for_the_server_itself() -> None:
    (req,) = feed_all(raw("options_asterisk.http"))
    assert isinstance(req, Request)
    assert (req.method, req.target, req.path, req.query) == ("OPTIONS", "*", "*", {})
    for method in (b"GET", b"POST", b"HEAD", b"DELETE"):  # any other method with "*" is a 400, body or not
        events = feed_all(method + b" * HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab")
        assert summary(events) == [("error", 400)], method


def test_body_of_exactly_one_mib_is_accepted() -> None:
    body = b"a" * codec.MAX_BODY
    data = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    (req,) = feed_all(data)
    assert isinstance(req, Request) and req.body == body


def test_exactly_100_headers_are_accepted() -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n"
    (req,) = feed_all(data)
    assert isinstance(req, Request) and len(req.headers) == 100


# -- rejected requests: every robustness rule of the issue ----------------------------------------------------
ERRORS = [
    ("missing_host.http", 400),
    ("duplicate_host.http", 400),
    ("http20.http", 505),
    ("http12.http", 505),
    ("cl_and_te.http", 400),
    ("te_and_cl.http", 400),
    ("duplicate_content_length.http", 400),
    ("invalid_chunk_size.http", 400),
    ("chunk_size_overflow.http", (400, 413)),
    ("content_length_too_large.http", 413),  # the fixture holds no body: 413 comes before it
    ("content_length_overflow.http", (400, 413)),
    ("head_too_large.http", 431),
    ("too_many_headers.http", 431),
    ("bare_cr_in_value.http", 400),
    ("control_char_in_value.http", 400),
    ("nul_in_value.http", 400),
    ("garbage_tls.http", 400),
    ("garbage_text.http", 400),
    ("asterisk_get.http", 400),  # the asterisk form is for OPTIONS only (RFC 9112 3.2.4)
    # found by test_codec_fuzz: was 400 in one read, 431 when a read ended inside the last line
    ("oversized_then_malformed_header.http", 400),
]


@pytest.mark.parametrize("name, status", ERRORS, ids=[n for n, _ in ERRORS])
def test_rejected(name: str, status: int | tuple[int, ...]) -> None:
    parser = RequestParser()
    events = parser.feed(raw(name))
    assert len(events) == 1, events
    err = events[0]
    assert isinstance(err, HttpError)
    assert err.status in (status if isinstance(status, tuple) else (status,)), err
    assert err.reason
    assert parser.failed
    # the connection is done: nothing more is parsed, and the close is not a second error
    assert parser.feed(raw("get.http")) == []
    assert parser.eof() is None


@pytest.mark.parametrize("name", [n for n, _ in ERRORS] + [
    "get.http", "pipelined.http", "chunked_post.http", "post_content_length.http", "http10.http",
    "http10_keepalive.http", "http11_close.http", "options_asterisk.http", "chunked_then_oversized_chunk.http"])
def test_byte_by_byte_gives_the_same_events_as_one_feed(name: str) -> None:
    data = raw(name)
    assert summary(feed_bytewise(data)) == summary(feed_all(data))


def test_error_after_a_good_pipelined_request_keeps_the_good_one_first() -> None:
    data = raw("get.http") + raw("missing_host.http") + raw("get.http")
    events = feed_all(data)
    assert summary(events)[1:] == [("error", 400)]
    assert isinstance(events[0], Request) and events[0].path == "/io"


def test_chunked_body_over_one_mib_is_413() -> None:
    chunk = b"a" * 65536
    head = b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17)) + b"0\r\n\r\n"
    events = feed_all(head + body)
    assert summary(events) == [("error", 413)]
    # fed as a client would send it, the error comes as soon as the limit is crossed, not at the end
    parser = RequestParser()
    assert parser.feed(head) == []
    fed = 0
    for i in range(17):
        events = parser.feed(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        fed += len(chunk)
        if events:
            break
    assert summary(events) == [("error", 413)]
    assert fed == codec.MAX_BODY + len(chunk)


def test_chunked_body_of_exactly_one_mib_is_accepted() -> None:
    chunk = b"a" * 65536
    data = (b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" +
            b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(16)) + b"0\r\n\r\n")
    (req,) = feed_all(data)
    assert isinstance(req, Request) and len(req.body) == codec.MAX_BODY


def test_request_line_over_8_kib_is_431() -> None:
    data = b"GET /" + b"a" * (codec.MAX_HEAD + 10) + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert summary(feed_all(data)) == [("error", 431)]
    assert summary(feed_bytewise(data)) == [("error", 431)]


def test_endless_header_line_is_431_whether_sent_at_once_or_byte_by_byte() -> None:
    # No CRLF ever comes, so llhttp never reports the header: the raw-byte guard must catch it,
    # and without waiting for more input (a client that then stays silent would otherwise get a 408).
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX-Endless: " + b"a" * 30000
    assert summary(feed_all(data)) == [("error", 431)]
    assert summary(feed_bytewise(data)) == [("error", 431)]


def test_content_length_413_comes_before_any_body_byte() -> None:
    parser = RequestParser()
    events = parser.feed(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (codec.MAX_BODY + 1))
    assert summary(events) == [("error", 413)]


@pytest.mark.parametrize("name", ["truncated_head.http", "truncated_body.http"])
def test_eof_mid_request_is_an_error(name: str) -> None:
    parser = RequestParser()
    assert parser.feed(raw(name)) == []
    err = parser.eof()
    assert isinstance(err, HttpError) and err.status == 400
    assert parser.failed
    assert parser.eof() is None  # counted once


def test_eof_before_anything_is_not_an_error() -> None:
    assert RequestParser().eof() is None


def test_an_empty_feed_changes_nothing() -> None:
    parser = RequestParser()
    assert parser.feed(b"") == []
    assert parser.idle
    assert len(parser.feed(raw("get.http"))) == 1


def test_upgrade_request_is_answered_then_the_connection_closes() -> None:
    data = (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" +
            raw("get.http"))
    parser = RequestParser()
    events = parser.feed(data)
    assert len(events) == 1 and isinstance(events[0], Request)
    assert events[0].keep_alive is False  # we speak no other protocol: answer, then close
    assert parser.feed(raw("get.http")) == []  # bytes after the upgrade are not parsed as HTTP


# -- responses -------------------------------------------------------------------------------------------------
def split_response(data: bytes) -> tuple[str, dict[str, str], list[str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    names = [line.split(":", 1)[0] for line in lines[1:]]
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in lines[1:]}
    return lines[0], headers, names, body


def test_render_keep_alive() -> None:
    data = codec.render(Response(200, b"Hello, world!"), keep_alive=True)
    status, headers, names, body = split_response(data)
    assert status == "HTTP/1.1 200 OK"
    assert body == b"Hello, world!"
    assert headers["content-length"] == "13"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["server"] == "webmodels"
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", headers["date"])
    assert "connection" not in headers
    assert len(names) == len(set(n.lower() for n in names))  # no header twice
    assert data.count(b"\r\n\r\n") == 1 and b"\n" not in data.replace(b"\r\n", b"")


def test_render_close_and_extra_headers() -> None:
    resp = Response(405, b"{}", "application/json", headers=[("Allow", "GET, POST")])
    status, headers, _, body = split_response(codec.render(resp, keep_alive=False))
    assert status == "HTTP/1.1 405 Method Not Allowed"
    assert headers["allow"] == "GET, POST"
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == "2" and body == b"{}"


def test_render_until_close_has_no_length_and_leaves_the_cached_heads_alone() -> None:
    # a kill's reply: its body ends when the connection closes (at the death), so no Content-Length
    died = Response(202, b'{"pid":1}', "application/json", close=True, until_close=True)
    status, headers, _, body = split_response(codec.render(died, keep_alive=False))
    assert status == "HTTP/1.1 202 Accepted" and "content-length" not in headers
    assert headers["connection"] == "close" and body == b'{"pid":1}'
    # the same status, type, length and keep-alive without it: still framed by its length (not a cached head)
    _, headers, _, _ = split_response(codec.render(Response(202, b'{"pid":2}', "application/json"), keep_alive=False))
    assert headers["content-length"] == "9"


def test_render_empty_body_and_unknown_status() -> None:
    status, headers, _, body = split_response(codec.render(Response(299), keep_alive=True))
    assert status == "HTTP/1.1 299 Unknown"
    assert headers["content-length"] == "0" and body == b""


def test_rendered_response_parses_back() -> None:
    # The bytes we send must be valid HTTP: parse them with httptools' response parser.
    import httptools

    got: dict = {}

    class P:
        def on_status(self, s: bytes) -> None:
            got["reason"] = s

        def on_body(self, b: bytes) -> None:
            got["body"] = got.get("body", b"") + b

        def on_message_complete(self) -> None:
            got["done"] = True

    parser = httptools.HttpResponseParser(P())
    parser.feed_data(codec.render(codec.json_response(404, {"error": "no route /x"}), keep_alive=True))
    assert got["done"] and parser.get_status_code() == 404 and got["reason"] == b"Not Found"
    assert json.loads(got["body"]) == {"error": "no route /x"}


def test_error_response_closes_and_says_why() -> None:
    err = HttpError(431, "request head too large")
    resp = codec.error_response(err)
    assert resp.close is True and resp.status == 431
    assert json.loads(resp.body) == {"error": "request head too large"}
    status, headers, _, _ = split_response(codec.render(resp, keep_alive=False))
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert headers["content-type"] == "application/json"


def test_invalid_host_value_is_400() -> None:
    from webmodels.codec import HttpError, RequestParser

    for bad in (b"a b", b"a/b", b"user@host", b"a\\b"):
        out = RequestParser().feed(b"GET / HTTP/1.1\r\nHost: " + bad + b"\r\n\r\n")
        assert len(out) == 1 and isinstance(out[0], HttpError) and out[0].status == 400, bad
    ok = RequestParser().feed(b"GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n")
    assert ok and not isinstance(ok[0], HttpError)


def test_unparseable_absolute_target_is_400_not_an_exception() -> None:
    from webmodels.codec import HttpError, RequestParser

    for target in (b"http://[::1", b"http://a:99999999/x"):
        out = RequestParser().feed(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert len(out) == 1 and isinstance(out[0], HttpError) and out[0].status == 400, target


def test_repeated_targets_parse_the_same_and_queries_are_not_shared() -> None:
    from webmodels.codec import RequestParser

    a, b = RequestParser().feed(b"GET /io?ms=5 HTTP/1.1\r\nHost: a\r\n\r\nGET /io?ms=5 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (a.path, a.query) == (b.path, b.query) == ("/io", {"ms": "5"})
    a.query["ms"] = "changed"
    assert b.query["ms"] == "5"


CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("step", [None, 1, 5])
@pytest.mark.parametrize("body", [
    b"200000\r\n",  # one chunk of 2 MiB, announced: refused before a byte of it
    b"3;name=value\r\nabc\r\nFFFFF\r\n",  # the second chunk takes the total past 1 MiB
])
def test_oversized_chunk_is_413_without_waiting_for_the_body(body: bytes, step: int | None) -> None:
    from webmodels.codec import HttpError, RequestParser

    parser, out = RequestParser(), []
    data = CHUNKED_HEAD + body
    for piece in ([data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]):
        out += parser.feed(piece)
    assert len(out) == 1 and isinstance(out[0], HttpError) and out[0].status == 413, out


def test_chunk_scanning_keeps_pipelining_and_trailers_intact() -> None:
    from webmodels.codec import RequestParser

    stream = (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + CHUNKED_HEAD + b"3\r\nabc\r\n80000\r\n" + b"x" * 0x80000
              + b"\r\n0\r\nX-Trailer: 1\r\n\r\nGET /whoami HTTP/1.1\r\nHost: a\r\n\r\n")
    for step in (None, 1000, 7):
        parser, out = RequestParser(), []
        for piece in ([stream] if step is None else [stream[i:i + step] for i in range(0, len(stream), step)]):
            out += parser.feed(piece)
        assert [r.path for r in out] == ["/", "/echo", "/whoami"], step
        assert out[1].body == b"abc" + b"x" * 0x80000


def test_an_oversized_chunk_right_after_a_chunked_request_with_trailers_is_413_at_once() -> None:
    # found by test_codec_fuzz: when the next request came in the same read as the end of a chunked body,
    # its chunk sizes were not watched (llhttp waited for 2 MiB; one byte at a time gave 413 at once)
    data = raw("chunked_then_oversized_chunk.http")
    for events in (feed_all(data), feed_bytewise(data)):
        assert [e.body if isinstance(e, Request) else e.status for e in events] == [b"hello", 413]


def test_blank_line_split_across_reads_still_finds_the_body_start() -> None:
    from webmodels.codec import HttpError, RequestParser

    data = CHUNKED_HEAD + b"200000\r\n"
    cut = len(CHUNKED_HEAD) - 2  # "...chunked\r\n" | "\r\n200000\r\n"
    for split in (cut - 1, cut, cut + 1):
        parser = RequestParser()
        out = parser.feed(data[:split]) + parser.feed(data[split:])
        assert len(out) == 1 and isinstance(out[0], HttpError) and out[0].status == 413, split
