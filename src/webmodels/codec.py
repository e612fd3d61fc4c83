"""Sans-IO HTTP/1.1 codec on httptools: bytes in, `Request`s or one `HttpError` out, response bytes back.

This module imports neither `socket` nor `asyncio`: every engine feeds it whatever it reads, however
it reads it, so the same input gets the same answer from every model. It is the only code that touches
httptools (llhttp). llhttp already rejects most malformed framing (Content-Length with Transfer-Encoding,
duplicate Content-Length, bad chunk sizes, bare CR, control characters in values); the rules it leaves to
the server are enforced here: Host on HTTP/1.1, the version (505), and the size limits, each mapped to a
status — 400 malformed, 408 too slow (the server's timer), 413 body too large, 431 head too large.
However the stream is cut into reads, the events are the same (tests/test_unit_codec_fuzz.py checks it).

After an `HttpError` the connection is unusable (we may be in the middle of a body we did not read): the
server sends `error_response(err)` and closes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import parse_qsl, unquote

import httptools

MAX_HEAD = 8 * 1024
MAX_HEADERS = 100
MAX_BODY = 1024 * 1024

REASONS = {
    200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 413: "Content Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}


@dataclass(slots=True)
class Request:
    method: str
    target: str  # the raw request-target, e.g. /io?ms=5
    path: str
    query: dict[str, str]
    headers: list[tuple[bytes, bytes]]
    body: bytes
    version: str  # "1.0" or "1.1"
    keep_alive: bool

    def header(self, name: bytes) -> bytes | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Sequence[tuple[str, str]] = ()  # extra header fields (a tuple by default: no list per response)
    close: bool = False  # close the connection after sending
    after: Callable[[], None] | None = None  # run after the bytes are sent (e.g. kill this process)
    # No Content-Length: the body ends when the connection does (with close). A kill's reply uses it so the
    # client's response ends at the death (the kernel closes the socket), not a moment before it.
    until_close: bool = False


@dataclass
class HttpError:
    status: int
    reason: str


IDLE, HEAD, BODY = 0, 1, 2  # RequestParser.phase

_HOST_FORBIDDEN = frozenset(b" \t/\\?#@")
_host_forbidden = re.compile(b"[" + re.escape(bytes(sorted(_HOST_FORBIDDEN))) + b"]").search
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
_bad_value = re.compile(b"[\x00\x7f\r\n]").search  # NUL, DEL, CR, LF in a header value


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class RequestParser:
    """Turn a byte stream into complete `Request`s (pipelining in order) or one `HttpError`."""

    def __init__(self, max_head: int = MAX_HEAD, max_headers: int = MAX_HEADERS, max_body: int = MAX_BODY):
        self.max_head, self.max_headers, self.max_body = max_head, max_headers, max_body
        self._parser = httptools.HttpRequestParser(self)
        self._done: list[Request | HttpError] = []
        self._failed = False
        self._upgrade = False
        self._head_raw = 0  # raw bytes fed since the previous message completed, while no head was complete
        self._guard = 2 * max_head + 4096  # raw head bytes after which a head that has not ended is a 431
        self._tail = b""  # the last 3 bytes fed, to find a blank line split across two reads
        self._chunks: _ChunkScan | None = None
        self._reset()
        self._in_message = False
        # Where the current message is: IDLE, HEAD (its first byte came), BODY (its head is complete).
        # A plain attribute set by the callbacks, so the connection policy can read it for free.
        self.phase = IDLE

    def _reset(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._headers_done = False
        self._version = "1.1"
        self._keep_alive = True
        self._chunked = False
        self._chunk_headers = 0
        self._chunks = None
        self._body_left: int | None = None  # Content-Length bytes still to come
        self._trailers = False  # past the last chunk: trailer fields until a blank line
        self._refused: _Reject | None = None  # the first limit the head broke, raised when the head ends

    # -- state the servers use for their timers ------------------------------------------------------
    @property
    def in_head(self) -> bool:
        """True while a request has begun but its head is incomplete (the header timeout runs)."""
        return self._in_message and not self._headers_done

    @property
    def idle(self) -> bool:
        """True when no partial request is buffered (the keep-alive idle timeout runs)."""
        return not self._in_message

    @property
    def failed(self) -> bool:
        return self._failed

    # -- feeding ----------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Request | HttpError]:
        """Parse DATA; return the requests it completed (in order), ending with an HttpError if any."""
        if self._failed or not data:
            return []
        if not self._headers_done and self._chunks is None and not self._upgrade and data[0] not in (10, 13):
            at = data.find(b"\r\n\r\n")
            if (at < 0 or at + 4 == len(data)) and len(data) < self._guard - self._head_raw:
                # The common case (one loop turn below, inlined): the read holds one head or the start of
                # one, nothing after it, and cannot pass the 431 guard.
                self._tail = data[-3:] if len(data) >= 3 else (self._tail + data)[-3:]
                failed = self._feed_piece(data)
                if failed is not None:
                    return failed
                if self._headers_done and self._in_message and self._chunked and not self._chunk_headers \
                        and not self._body_len:
                    self._chunks = _ChunkScan(self.max_body)
                out, self._done = self._done, []
                if self._upgrade:
                    self._failed = True
                return out
        while data and not self._upgrade:
            if self._chunks is not None:
                # We are at a known place in a chunked body: read the chunk sizes before llhttp does, so
                # an oversized chunk is refused now instead of after a megabyte (httptools hides the size).
                reason = self._chunks.scan(data)
                if reason:
                    return self._fail(413, reason)
                if self._chunks.done:  # at the last chunk: trailers follow, then maybe the next request
                    end, self._chunks, self._trailers = self._chunks.end, None, True
                    piece, data = data[:end], data[end:]
                else:
                    piece, data = data, b""
            elif not self._headers_done or self._trailers:
                # Feed the head (or the trailers) up to its blank line on its own, so that we know exactly
                # where a chunked body (or the next request) starts, however the stream was cut. Splitting
                # a stream never changes what llhttp parses.
                if data[0] in (10, 13) and self._tail:  # the blank line may have begun in the last read
                    at = (self._tail + data).find(b"\r\n\r\n")
                    end = -1 if at < 0 else at + 4 - len(self._tail)
                else:
                    at = data.find(b"\r\n\r\n")
                    end = -1 if at < 0 else at + 4
                if end < 0 or end == len(data):  # the common case: the read ends with the head
                    piece, data = data, b""
                else:
                    piece, data = data[:end], data[end:]
                room = self._guard - self._head_raw
                if len(piece) > room > 0 and not self._headers_done:
                    # The head would pass the 431 guard inside this read: llhttp sees exactly the guard's
                    # worth, however the stream was cut, so an error in those bytes wins the same way.
                    piece, data = piece[:room], piece[room:] + data
            elif self._body_left and self._body_left < len(data):
                # The body ends inside this read: feed it alone, so the next head starts a piece (its
                # guard counts the same bytes whether or not it came in the same read as this body).
                piece, data = data[:self._body_left], data[self._body_left:]
            else:
                piece, data = data, b""
            self._tail = piece[-3:] if len(piece) >= 3 else (self._tail + piece)[-3:]
            head_was_done = self._headers_done
            if self._body_left is not None and head_was_done:
                self._body_left -= len(piece)
            failed = self._feed_piece(piece)
            if failed is not None:
                return failed
            if (not head_was_done and self._headers_done and self._in_message and self._chunked
                    and not self._chunk_headers and not self._body_len):
                self._chunks = _ChunkScan(self.max_body)
        out, self._done = self._done, []
        if self._upgrade:
            self._failed = True  # nothing more will be parsed on this connection
        return out

    def _feed_piece(self, data: bytes) -> list[Request | HttpError] | None:
        if not self._headers_done:
            # Guard for a head streamed in one endless header line: llhttp reports a header only when
            # it is complete, so count raw bytes too (generously: a chunk can also hold the next request).
            self._head_raw += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # We speak no other protocol: answer what was asked, then close (bytes after it are not ours).
            self._upgrade = True
            for ev in self._done:
                if isinstance(ev, Request):
                    ev.keep_alive = False
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                return self._fail(cause.status, cause.reason)
            raise
        except httptools.HttpParserInvalidMethodError:
            return self._fail(400, "invalid method")
        except httptools.HttpParserError as exc:
            msg = str(exc)
            if "HTTP version" in msg:
                return self._fail(505, "unsupported HTTP version")
            if "Content-Length overflow" in msg:
                return self._fail(413, "Content-Length too large")
            return self._fail(400, msg or "malformed request")
        if self._head_raw >= self._guard and self.in_head:
            # checked after feeding, so one big read and the same bytes one at a time get the same answer
            return self._fail(431, "request head too large")
        return None

    def eof(self) -> HttpError | None:
        """The peer closed: a half-received request is an error worth counting (no one gets a reply)."""
        if self._in_message and not self._failed:
            self._failed = True
            return HttpError(400, "connection closed mid-request")
        return None

    def _fail(self, status: int, reason: str) -> list[Request | HttpError]:
        self._failed = True
        out, self._done = self._done, []
        out.append(HttpError(status, reason))
        return out

    # -- httptools callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        # No _reset() here: the state is clean already (__init__, or the previous message's end reset it;
        # a parser that failed is never fed again).
        self._in_message = True
        self.phase = HEAD

    # A limit broken in the head is raised when the head ends, not at once: llhttp reports a header only
    # when the next one begins, which depends on where the reads were cut; raising at the end (or letting
    # llhttp's own error win if the head turns out malformed) gives every cut of a stream the same answer.
    # Nothing more is buffered meanwhile, and the raw-byte guard still bounds the head.
    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._refused is not None:
            return
        if self._head_bytes > self.max_head:
            self._refused = _Reject(431, "request line too long")
            return
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused is not None:
            return
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head:
            self._refused = _Reject(431, "request head too large")
        elif len(self._headers) >= self.max_headers:
            self._refused = _Reject(431, f"more than {self.max_headers} header fields")
        # llhttp rejects most control characters; NUL and DEL still need an explicit check (RFC 9110 5.5)
        elif _bad_value(value):
            self._refused = _Reject(400, "invalid character in header value")
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._refused is not None:
            raise self._refused
        self.phase = BODY
        self._version = version = self._parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise _Reject(505, f"HTTP/{version} is not supported")
        hosts: list[bytes] = []
        connection: list[bytes] = []
        for k, v in self._headers:  # one pass: this runs for every request
            k = k.lower()
            if k == b"host":
                hosts.append(v)
            elif k == b"connection":
                connection.extend(t.strip().lower() for t in v.split(b","))
            elif k == b"transfer-encoding":
                self._chunked = v.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif k == b"content-length":
                self._body_left = int(v)  # llhttp validated the digits (and refuses a second one)
                if self._body_left > self.max_body:  # refuse a large body before reading a byte of it
                    raise _Reject(413, f"body larger than {self.max_body} bytes")
        if self._url == b"*" and self._parser.get_method() != b"OPTIONS":
            raise _Reject(400, "the asterisk form is only for OPTIONS")  # RFC 9112 3.2.4
        if version == "1.1" and len(hosts) != 1:
            raise _Reject(400, "missing Host header" if not hosts else "more than one Host header")
        if hosts and _host_forbidden(hosts[0]):
            raise _Reject(400, "invalid Host header")  # RFC 9112 3.2: Host is uri-host [":" port], no more
        self._keep_alive = (b"keep-alive" in connection) if version == "1.0" else (b"close" not in connection)

    def on_chunk_header(self) -> None:
        self._chunk_headers += 1

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self.max_body:
            raise _Reject(413, f"body larger than {self.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = self._url
        target = url.decode("latin-1")
        path, query = _split_target(target, url)
        body = self._body
        method = self._parser.get_method()
        # Positional: a keyword call costs more than the dataclass's work (this runs for every request).
        self._done.append(Request(
            _METHODS.get(method) or method.decode("ascii"), target, path, dict(query) if query else {},
            self._headers, (body[0] if len(body) == 1 else b"".join(body)) if body else b"", self._version,
            self._keep_alive))
        self._in_message = False
        self.phase = IDLE
        self._reset()
        self._head_raw = 0


class _ChunkScan:
    """Follow chunked framing just far enough to read each chunk's size (llhttp still validates it all).

    Fed the body from its first byte; refuses as soon as the announced sizes pass LIMIT. On anything it
    does not expect it simply stops watching (llhttp will reject the input, or the 1 MiB cap on the
    received body still applies). Stops at the last chunk: trailers are llhttp's business.
    """

    SIZE, EXT, LF, DATA, DATA_CR, DATA_LF = range(6)

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.state = self.SIZE
        self.size = 0
        self.total = 0
        self.left = 0
        self.done = False
        self.end = 0  # where, in the data of the call that set done, scanning stopped

    def scan(self, data: bytes) -> str | None:
        i, n = 0, len(data)
        while i < n and not self.done:
            c = data[i]
            if self.state == self.SIZE:
                digit = _HEX.get(c)
                if digit is not None:
                    self.size = self.size * 16 + digit
                    if self.total + self.size > self.limit:
                        return f"chunked body larger than {self.limit} bytes"
                elif c == 0x0D:
                    self.state = self.LF
                elif c in (0x3B, 0x20, 0x09):  # ';' starts chunk extensions (or whitespace before them)
                    self.state = self.EXT
                else:
                    self.done = True
                i += 1
            elif self.state == self.EXT:
                j = data.find(b"\r", i)
                if j < 0:
                    return None
                self.state, i = self.LF, j + 1
            elif self.state == self.LF:
                if c != 0x0A:
                    self.done = True
                elif self.size == 0:
                    self.done = True  # the last chunk
                else:
                    self.total += self.size
                    self.left, self.size, self.state = self.size, 0, self.DATA
                i += 1
            elif self.state == self.DATA:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = self.DATA_CR
            elif self.state == self.DATA_CR:
                self.state = self.DATA_LF if c == 0x0D else self.state
                self.done = c != 0x0D
                i += 1
            else:  # DATA_LF
                self.state = self.SIZE
                self.done = c != 0x0A
                i += 1
        self.end = i
        return None


_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
_targets: dict[str, tuple[str, dict[str, str]]] = {}  # a load test repeats a handful of targets


def _split_target(target: str, raw: bytes) -> tuple[str, dict[str, str]]:
    """Return (decoded path, query dict) of a request-target; cached, since parsing costs ~1 µs."""
    hit = _targets.get(target)
    if hit is not None:
        return hit
    if raw[:1] != b"/" and target != "*" and not target.startswith(("http://", "https://")):
        raise _Reject(400, "invalid request target")
    try:
        url = httptools.parse_url(raw) if target != "*" else None
    except httptools.HttpParserInvalidURLError:
        raise _Reject(400, "invalid request target") from None
    if url is None:
        return "*", {}  # OPTIONS * asks about the server as a whole: a route of its own, not "/"
    path = unquote(url.path.decode("latin-1")) if url.path else "/"
    query: dict[str, str] = {}
    if url.query:
        query = dict(parse_qsl(url.query.decode("latin-1"), keep_blank_values=True))
    if len(_targets) < 1024:
        _targets[target] = (path, query)
    return path, query


# -- responses ---------------------------------------------------------------------------------------------
_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    # Formatting a date per response is measurable at 50k rps; it changes once a second.
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode())
    return _date_cache[1]


def render(resp: Response, keep_alive: bool) -> bytes:
    """Serialize RESP; keep_alive=False adds `Connection: close` (the caller then closes)."""
    body = resp.body
    if resp.headers or resp.until_close:
        return _render_head(resp, keep_alive, _date()) + body
    # A response without extra headers has a head that depends only on these four and the Date, which
    # changes once a second: render it once per second and key (a hello is then one lookup and one concat).
    global _heads_date
    date = _date()
    if date is not _heads_date:
        _heads.clear()
        _heads_date = date
    key = (resp.status, resp.content_type, len(body), keep_alive)
    head = _heads.get(key)
    if head is None:
        head = _render_head(resp, keep_alive, date)
        if len(_heads) < 256:  # bodies of many sizes (/bytes?kb=N): a bounded cache, cleared every second
            _heads[key] = head
    return head + body


_heads: dict[tuple[int, str, int, bool], bytes] = {}
_heads_date = b""


def _render_head(resp: Response, keep_alive: bool, date: bytes) -> bytes:
    reason = REASONS.get(resp.status, "Unknown")
    head = [
        b"HTTP/1.1 %d %s\r\n" % (resp.status, reason.encode()),
        b"Server: webmodels\r\nDate: " + date + b"\r\n",
        b"Content-Type: " + resp.content_type.encode() + b"\r\n",
    ]
    if not resp.until_close:
        head.append(b"Content-Length: %d\r\n" % len(resp.body))
    for k, v in resp.headers:
        head.append(f"{k}: {v}\r\n".encode("latin-1"))
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head)


def json_response(status: int, payload: object, **kw: object) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, "application/json", **kw)  # type: ignore[arg-type]


def error_response(err: HttpError) -> Response:
    """The reply to a protocol error: always closes the connection."""
    return json_response(err.status, {"error": err.reason}, close=True)


HEAD_TIMEOUT_408 = HttpError(408, "request head not received in time")
BODY_TIMEOUT_408 = HttpError(408, "request body not received in time")
BUSY_503 = HttpError(503, "every thread is busy and the queue is full")
