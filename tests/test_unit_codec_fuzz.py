"""The codec under property-based fuzzing (hypothesis): streams built from the request corpus, mutated.

Properties, for any byte stream cut at any points:
- the events are the same as when the whole stream is fed at once (a server reads whatever recv() gives);
- the events are requests, then at most one HttpError, and nothing is parsed after it (nor is EOF then a
  second error); feed() never raises;
- what the parser holds never grows past the configured limits (request line and headers ≤ max_head,
  fields ≤ max_headers, body ≤ max_body, raw head bytes ≤ the 431 guard) — checked after every feed.
Well-formed generated requests, pipelined and cut anywhere, come out exactly as they went in.

Profiles (tests/conftest.py): `ci` (default: derandomized, a few seconds) and `fuzz` (`make fuzz`:
HYPOTHESIS_PROFILE=fuzz, many more examples). `--hypothesis-show-statistics` prints the example counts.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from webmodels.codec import HttpError, Request, RequestParser

REQUESTS = Path(__file__).parent / "requests"
CORPUS = [p.read_bytes() for p in sorted(REQUESTS.glob("*.http"))]
# Small limits so that generated streams actually reach them; the defaults get the corpus as it is.
SMALL = {"max_head": 256, "max_headers": 8, "max_body": 512}
LIMITS = st.sampled_from([SMALL, {}])
TOKENS = [b"\r\n", b"\r\n\r\n", b"\r", b"\n", b" ", b":", b"0\r\n\r\n", b"Transfer-Encoding: chunked\r\n",
          b"Content-Length: 5\r\n", b"Host: h\r\n", b"GET / HTTP/1.1\r\n", b"HTTP/1.0", b"*", b"\x00", b"\x7f",
          b"Connection: close\r\n", b"Upgrade: x\r\nConnection: upgrade\r\n", b"ffffffff\r\n", b";ext=1"]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes] = st.sampled_from(CORPUS)) -> bytes:
    """A corpus request after a few byte flips, cuts, insertions, deletions or duplications."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "token", "delete", "dup"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(at, len(data) - 1)
            data[i] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "dup":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


@st.composite
def good_request(draw: st.DrawFn) -> tuple[bytes, tuple]:
    """A well-formed request and what the parser must make of it: (method, path, body)."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"]))
    path = "/" + draw(st.text(alphabet="abcxyz019-._~", max_size=12))
    headers = [b"Host: lab.test"] + [b"X-%d: %s" % (i, v) for i, v in enumerate(
        draw(st.lists(st.binary(min_size=0, max_size=12).map(lambda b: bytes(c % 94 + 33 for c in b)),
                      max_size=4)))]
    body = draw(st.binary(max_size=300)) if method in ("POST", "PUT") else b""
    if body and draw(st.booleans()):
        cuts = sorted(set(draw(st.lists(st.integers(1, len(body)), max_size=3))))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if body[a:b]]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        headers.append(b"Transfer-Encoding: chunked")
    else:
        framed = body
        if body or method in ("POST", "PUT"):
            headers.append(b"Content-Length: %d" % len(body))
    head = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    return head + framed, (method, path, body)


piece = st.one_of(st.sampled_from(CORPUS), mutated(), good_request().map(lambda g: g[0]),
                  st.binary(max_size=48), st.sampled_from(TOKENS))
streams = st.lists(piece, min_size=1, max_size=6).map(b"".join)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *edges], [*edges, len(data)]) if data[a:b]]


def summary(events: list[Request | HttpError]) -> list[tuple]:
    return [("error", e.status, e.reason) if isinstance(e, HttpError) else
            (e.method, e.target, e.path, e.query, e.headers, e.body, e.version, e.keep_alive) for e in events]


def check_bounded(p: RequestParser) -> None:
    """What the parser holds between two feeds stays within the limits it was given."""
    if p.failed:
        return
    assert len(p._url) + sum(len(k) + len(v) + 4 for k, v in p._headers) <= p.max_head
    assert len(p._headers) <= p.max_headers
    assert p._body_len <= p.max_body and sum(map(len, p._body)) == p._body_len
    if p.in_head:
        assert p._head_raw <= 2 * p.max_head + 4096, p._head_raw  # the 431 guard for an endless header line
    assert len(p._tail) <= 3


def run(pieces: list[bytes], limits: dict) -> tuple[list, HttpError | None]:
    """Feed PIECES one by one, checking the invariants after each; return (events, the EOF verdict)."""
    p = RequestParser(**limits)
    events: list[Request | HttpError] = []
    for data in pieces:
        failed_before = p.failed
        out = p.feed(data)
        if failed_before:
            assert out == [], "parsed after an error (or an upgrade)"
        events += out
        check_bounded(p)
    errors = [i for i, e in enumerate(events) if isinstance(e, HttpError)]
    assert errors in ([], [len(events) - 1]), summary(events)  # at most one error, and it is the last event
    if errors:
        assert p.failed
    final = p.eof()
    if errors:
        assert final is None, "an error after an error"
    assert p.eof() is None  # counted once
    assert p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == [] or not (errors or final)
    return events, final


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream=streams, points=st.lists(st.integers(0, 10_000), max_size=12), limits=LIMITS)
@example(stream=b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", points=[5], limits={})
def test_any_split_gives_the_same_events_as_the_whole_stream(stream: bytes, points: list[int], limits: dict) -> None:
    whole, whole_eof = run([stream], limits)
    split, split_eof = run(cut(stream, points), limits)
    assert summary(split) == summary(whole)
    assert summary([split_eof] if split_eof else []) == summary([whole_eof] if whole_eof else [])


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream=streams, limits=LIMITS)
def test_byte_by_byte_gives_the_same_events_as_the_whole_stream(stream: bytes, limits: dict) -> None:
    stream = stream[:2048]  # one feed per byte: keep it short
    whole, _ = run([stream], limits)
    bytewise, _ = run([stream[i:i + 1] for i in range(len(stream))], limits)
    assert summary(bytewise) == summary(whole)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(good_request(), min_size=1, max_size=5), points=st.lists(st.integers(0, 10_000), max_size=10))
def test_well_formed_pipelined_requests_come_out_as_they_went_in(reqs: list, points: list[int]) -> None:
    stream = b"".join(raw for raw, _ in reqs)
    events, final = run(cut(stream, points), {})
    assert final is None
    assert [(e.method, e.path, e.body) for e in events] == [want for _, want in reqs]
    assert all(isinstance(e, Request) and e.keep_alive for e in events)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(head=st.binary(min_size=1, max_size=64), filler=st.sampled_from([b"a", b"\t", b"x: y\r\n"]),
       n=st.integers(1, 4000), step=st.sampled_from([1, 7, 100, 4096, 1 << 20]))
def test_an_endless_head_is_refused_before_it_passes_the_limits(head: bytes, filler: bytes, n: int,
                                                                 step: int) -> None:
    # Whatever comes first, a head that never ends must not be buffered past the limits (431 or 400).
    stream = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + head.replace(b"\r\n\r\n", b"") + filler * n
    events, _ = run([stream[i:i + step] for i in range(0, len(stream), step)], SMALL)
    assert len(events) <= 1
