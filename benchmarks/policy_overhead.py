"""What the connection policy adds per request on the event loop's hello fast path (no sockets, one core).

Both sides parse the same keep-alive request, decide keep-alive and render the same response; the policy
side does it through `Connection.receive/respond/sending` (timers, accounting, the after hook, the linger
decision) instead of inline as servers/eventloop.py does today. Timed in thread CPU time, so a busy machine
(other processes taking the core) inflates it less than wall time would; runs alternate; prints medians.

    .venv/bin/python benchmarks/policy_overhead.py [--runs 7] [--n 200000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from webmodels.codec import RequestParser, Response, render
from webmodels.connection import Limits, Policy

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost:8003\r\nUser-Agent: wrk\r\n\r\n"
RESP = Response(200, b"Hello, world!")


def inline(n: int) -> float:
    """Today's loop fast path, minus dispatch and the transport: feed, one clock read, keep decision, render."""
    parser = RequestParser()
    monotonic, keepalive, stopping = time.monotonic, True, False
    t0 = time.thread_time()
    for _ in range(n):
        events = parser.feed(REQUEST)
        waiting_since = monotonic()  # noqa: F841 - the loop stamps its timer per read
        req = events[0]
        keep = req.keep_alive and not RESP.close and keepalive and not stopping
        render(RESP, keep)
    return (time.thread_time() - t0) / n


def with_policy(n: int) -> float:
    """The same through the policy: receive, respond, sending(0) (the buffer emptied at once)."""
    conn = Policy(Limits()).connection(time.monotonic())
    monotonic = time.monotonic
    t0 = time.thread_time()
    for _ in range(n):
        now = monotonic()
        req = conn.receive(REQUEST, now)[0]
        conn.respond(req, RESP, now)
        conn.sending(0, now)
    return (time.thread_time() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    a, b = [], []
    for _ in range(args.runs):  # alternate, so drift on the machine hits both
        a.append(inline(args.n))
        b.append(with_policy(args.n))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"inline (today's loop) : {ma * 1e6:.3f} µs/request  [{min(a) * 1e6:.3f}–{max(a) * 1e6:.3f}]")
    print(f"through the policy    : {mb * 1e6:.3f} µs/request  [{min(b) * 1e6:.3f}–{max(b) * 1e6:.3f}]")
    print(f"policy overhead       : {(mb - ma) * 1e6:+.3f} µs/request median, {(min(b) - min(a)) * 1e6:+.3f} "
          f"µs best-of-{args.runs} (× {args.n} requests each)")


if __name__ == "__main__":
    main()
