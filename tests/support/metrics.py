"""Read a server's /metrics the way Prometheus does, and check it against the server's own request count."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from .servers import Server

REQUESTS = "http_server_request_duration_seconds_count"


def histogram(text: str) -> dict[tuple[str, str, str], float]:
    """{(method, route, status): count} of the request histogram in an exposition TEXT."""
    return {(s.labels["http_request_method"], s.labels["http_route"], s.labels["http_response_status_code"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples if s.name == REQUESTS}


def counted(srv: Server) -> int:
    """counters.requests now, this look included (it counts itself once it is answered)."""
    return srv.counters()["requests"] + 1


def balanced(srv: Server, requests: int = 0, slack: int = 0, timeout: float = 10.0) -> dict:
    """Wait until counters.requests is REQUESTS (if given: counted() before, plus what the test sent) and the
    histogram's total count equals it (within SLACK); return the histogram's counts.

    The scrape first: it is not counted anywhere; the stats request then counts every request but itself
    (it is still being answered), so both sides see the same requests — plus one per earlier poll. Polled,
    because the server counts an abandoned connection when it notices the close.
    """
    deadline, polls = time.monotonic() + timeout, 0
    while True:
        hist = histogram(srv.get("/metrics").text)
        n = srv.counters()["requests"]
        ok = 0 <= n - sum(hist.values()) <= slack and (not requests or n == requests + polls)
        if ok or time.monotonic() > deadline:
            break
        polls += 1
        time.sleep(0.1)
    assert ok, (n, sum(hist.values()), requests, polls, hist)
    return hist
