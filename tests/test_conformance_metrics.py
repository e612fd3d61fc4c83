"""Every answer is in `/metrics` on every configuration: refusals, a 408, an abandoned head and the 503 at
admission included, each counted once; scrapes are never counted. Real servers on port 0 (support.CONFIGS).

The exposition's format and the shared tally without a server: test_unit_metrics.py. Counts across worker
deaths: test_master.py.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import CONFIGS, Conn, Server
from .support.metrics import balanced, counted, histogram
from .support.raw import request

BAD = {  # what the codec refuses, as bytes on the wire
    400: b"GET / HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
    431: b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    413: b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n",
}
REFUSED = ("_OTHER", "other")  # the method and route of an answer the policy gave itself


def raw_status(srv: Server, data: bytes) -> int:
    """Send DATA on a new connection; return the status the server answers with."""
    with Conn(srv, timeout=10) as c:
        try:
            c.send(data)
        except OSError:
            pass  # it answered (and closed) before reading it all: the answer is still there to read
        return c.read_reply().status


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_answer_is_in_the_histogram_and_scrapes_are_not(config: str, start_server) -> None:
    """After good and bad requests of every kind: each is a series, and the histogram's total == counters.requests."""
    srv = start_server(*CONFIGS[config].argv("--header-timeout", "1"))
    with srv.client() as c:
        for _ in range(5):
            assert c.get("/").status_code == 200
        before = srv.counters()["requests"]  # this look counts once ...
        for _ in range(3):
            r = c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert srv.counters()["requests"] == before + 1  # ... and so does this one; the scrapes did not
        fams = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
        (info,) = fams["webmodels_info"].samples
        assert info.labels["model"] == srv.model and info.labels["pid"] == str(srv.pid)
    assert histogram(srv.get("/metrics").text)[("GET", "/", "200")] == 5

    before = counted(srv)
    with srv.client() as c:
        for path in ("/", "/io?ms=5", "/bytes?kb=2", "/nope", "/cpu?ms=bad", "/fault/raise"):
            c.get(path)
        c.post("/", content=b"x")  # 405
        c.request("PURGE", "/")  # an unknown method
        c.post("/echo", content=b"y" * 3000)
    for status, data in BAD.items():  # 400, 413, 431 never reached a handler: method _OTHER, route other
        assert raw_status(srv, data) == status
    assert raw_status(srv, b"GET /io HTTP/1.1\r\nHost: t\r\n") == 408  # half a head, then silence
    with Conn(srv) as c:  # half a head, abandoned: the server counts it when it sees the close
        c.send(b"GET / HT")
    hist = balanced(srv, requests=before + 14)  # 9 + 3 refused + a 408 + the abandoned one
    assert hist[(*REFUSED, "400")] == 2, hist  # the malformed head and the abandoned one
    for status in (413, 431, 408):
        assert hist.get((*REFUSED, str(status))) == 1, (status, hist)


@pytest.mark.parametrize("config", [c.id for c in CONFIGS.values() if c.engine in ("threads", "gevent")])
def test_the_503_at_admission_is_in_metrics_once(config: str, start_server) -> None:
    # a bounded pool (threads, greenlets) of one, no queue: a new connection that finds it busy gets the 503
    srv = start_server(*CONFIGS[config].argv("--queue", "0", one=True))
    before = counted(srv)
    statuses: list[int] = []  # (no stats poll meanwhile: its new connection would get the 503 itself)
    sent = refused = 0
    while 503 not in statuses and len(statuses) < 8:
        with Conn(srv) as hog:
            hog.get("/io?ms=2000")  # accepted first, so admitted: it holds the one thread for 2 s ...
            # ... and the probe finds it busy — unless it came before the hog's thread had started on it: then
            # it was admitted too, waited its turn and got a 200. So give the hog a head start, longer each try.
            time.sleep(min(1.0, 0.05 * 2 ** len(statuses)))
            statuses.append(raw_status(srv, request("/", "Connection: close\r\n")))
            hog_status = hog.read_reply().status
            # (a hog may itself find the thread still letting go of the last probe, on a busy machine: a 503 too)
            assert hog_status in (200, 503), hog_status
            sent += 2
            refused += (statuses[-1] == 503) + (hog_status == 503)
    assert statuses[-1] == 503, statuses
    hist = balanced(srv, requests=before + sent)  # each hog, each probe
    assert hist.get((*REFUSED, "503")) == refused, hist
