"""`/metrics`: the exposition parses, labels are route templates, scrapes are not counted, every answer is
in the histogram (refusals included), prefork sums its workers and never goes backwards.

Unit tests drive app.dispatch_sync with parsed requests (no sockets); the shared tally is tested with
processes forked here (no prefork server); the integration tests use real servers on port 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from webmodels import app, metrics, tally
from webmodels.codec import RequestParser
from webmodels.config import build_config
from webmodels.runtime import Runtime

from .support.raw import Conn
from .support import MODELS, SERVERS, Server, wait_for


def runtime(faults: bool = True) -> Runtime:
    rt = Runtime(build_config("eventloop", {"faults": faults}, {}))
    rt.model = "eventloop"
    return rt


def request(method: str, target: str, body: bytes = b""):
    raw = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    (req,) = RequestParser().feed(raw)
    return req


def scrape(rt: Runtime) -> dict:
    """GET /metrics through the handler; return {sample name: [(labels, value)]}."""
    resp = app.dispatch_sync(request("GET", "/metrics"), rt)
    assert resp.status == 200 and resp.content_type == metrics.CONTENT_TYPE
    out: dict = {}
    for fam in text_string_to_metric_families(resp.body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def test_exposition_parses_and_has_every_family():
    rt = runtime()
    app.dispatch_sync(request("GET", "/"), rt)
    fams = {f.name: f for f in text_string_to_metric_families(
        app.dispatch_sync(request("GET", "/metrics"), rt).body.decode())}
    assert fams["http_server_request_duration_seconds"].type == "histogram"
    for name in ("http_server_active_requests", "webmodels_workers", "webmodels_busy_threads",
                 "webmodels_loop_lag_seconds", "webmodels_memory_bytes", "webmodels_info",
                 "webmodels_start_time_seconds", "webmodels_processes"):
        assert fams[name].type == "gauge", name
    for name in ("webmodels_worker_restarts", "webmodels_faults_injected"):
        assert fams[name].type == "counter", name
    mem = {s.labels["kind"]: s.value for s in fams["webmodels_memory_bytes"].samples}
    assert set(mem) == {"rss", "uss", "pss"} and mem["rss"] >= mem["pss"] >= mem["uss"] > 0
    (info,) = fams["webmodels_info"].samples
    assert info.labels == {"model": "eventloop", "engine": "loop", "pid": str(os.getpid())}


def test_route_templates_methods_and_statuses_as_labels():
    rt = runtime()
    for method, target in [("GET", "/io?ms=0"), ("GET", "/io?ms=1"), ("GET", "/no/such/path?x=1"),
                           ("GET", "/another-unknown"), ("POST", "/"), ("PURGE", "/"), ("GET", "/cpu?ms=bad")]:
        app.dispatch_sync(request(method, target), rt)
    s = scrape(rt)
    count = "http_server_request_duration_seconds_count"
    assert value(s, count, http_route="/io", http_request_method="GET", http_response_status_code="200") == 2
    assert value(s, count, http_route="other", http_response_status_code="404") == 2  # raw paths never labels
    assert value(s, count, http_route="/", http_request_method="POST", http_response_status_code="405") == 1
    assert value(s, count, http_route="/", http_request_method="_OTHER") == 1
    assert value(s, count, http_route="/cpu", http_response_status_code="400") == 1
    routes = {lab["http_route"] for lab, _ in s[count]}
    assert routes <= set(app.ROUTES) | set(app.FAULT_ROUTES) | {"other"}
    buckets = [lab["le"] for lab, _ in s["http_server_request_duration_seconds_bucket"]
               if lab["http_route"] == "/io" and lab["http_response_status_code"] == "200"]
    assert len(buckets) == len(tally.BUCKETS) + 1 and buckets[-1] == "+Inf"


def test_fault_routes_count_as_faults_only_when_faults_are_on():
    rt = runtime(faults=True)
    app.dispatch_sync(request("POST", "/fault/raise"), rt)
    app.dispatch_sync(request("GET", "/fault/leak?mb=1"), rt)
    s = scrape(rt)
    assert value(s, "webmodels_faults_injected_total", kind="raise") == 1
    assert value(s, "webmodels_faults_injected_total", kind="leak") == 1
    assert value(s, "http_server_request_duration_seconds_count", http_route="/fault/raise",
                 http_response_status_code="500") == 1
    off = runtime(faults=False)
    app.dispatch_sync(request("POST", "/fault/raise"), off)
    s = scrape(off)
    assert value(s, "webmodels_faults_injected_total") == 0
    assert value(s, "http_server_request_duration_seconds_count", http_route="other",
                 http_response_status_code="404") == 1


def test_metrics_is_never_counted_and_histogram_count_equals_requests():
    rt = runtime()
    for target in ("/", "/", "/bytes?kb=1", "/nope"):
        app.dispatch_sync(request("GET", target), rt)
    rt.request_finished(408, started=False)  # what the connection policy calls for a 408 (and every refusal)
    before = dict(rt.counters())
    for _ in range(3):
        s = scrape(rt)
    assert rt.counters() == before  # three scrapes later: not a request more, nothing in flight
    assert value(s, "http_server_request_duration_seconds_count") == before["requests"] == 5
    assert not [lab for lab, _ in s["http_server_request_duration_seconds_count"] if lab["http_route"] == "/metrics"]
    assert value(s, "http_server_request_duration_seconds_count", http_response_status_code="408",
                 http_route="other", http_request_method="_OTHER") == 1
    assert value(s, "http_server_active_requests") == 0
    assert value(s, "webmodels_metrics_scrape_duration_seconds") > 0


def test_post_metrics_is_405_and_not_counted():
    rt = runtime()
    resp = app.dispatch_sync(request("POST", "/metrics"), rt)
    assert resp.status == 405 and rt.counters()["requests"] == 0


def test_scrape_waits_as_an_effect_on_the_event_loop():
    """The /proc reading happens on a helper thread; the handler yields Sleep meanwhile (loop keeps serving)."""
    import asyncio

    rt = runtime()
    gen = app.handle(request("GET", "/metrics"), rt)
    effects = []
    try:
        effect = next(gen)
        while True:
            effects.append(effect)
            time.sleep(effect.seconds)
            effect = gen.send(None)
    except StopIteration as stop:
        resp = stop.value
    assert resp.status == 200 and effects and all(e.seconds <= 0.001 for e in effects)
    pending = app.dispatch_fast(request("GET", "/metrics"), rt)  # the event loop's path: it waits, so a coroutine
    assert not isinstance(pending, app.Response)
    resp = asyncio.run(pending)
    assert resp.status == 200 and rt.counters()["requests"] == 0


# -- the tally, without a server ------------------------------------------------------------------------------------
def _text(*families_of: object) -> bytes:
    """The exposition text of collectors (objects with collect()), in order."""
    reg = CollectorRegistry(auto_describe=False)
    for c in families_of:
        reg.register(c)  # type: ignore[arg-type]
    return generate_latest(reg)


class _Families:
    def __init__(self, regions: tally.Regions) -> None:
        self.regions = regions

    def collect(self):
        return metrics.families(self.regions)


def _in_child(fn) -> int:
    """Fork; run FN in the child and leave with os._exit (0, or 1 if it raised); return the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def _exited(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _totals(regions: tally.Regions) -> tuple[int, list[int]]:
    rows, faults = regions.read()
    return sum(sum(c[:-1]) for c in rows.values()), faults


def test_tally_renders_exactly_as_prometheus_clients_histogram_and_counter():
    from prometheus_client import Counter, Histogram, disable_created_metrics, enable_created_metrics

    rt = runtime()
    theirs = CollectorRegistry()
    hist = Histogram(metrics.DURATION, metrics.DURATION_HELP, metrics.LABELS, buckets=tally.BUCKETS,
                     registry=theirs)
    faults = Counter("webmodels_faults_injected", "Fault routes entered, by kind", ["kind"], registry=theirs)
    cases = [(("GET", "/", 200), ("GET", "/", "200")), (("POST", "/echo", 500), ("POST", "/echo", "500")),
             (("PURGE", "/no/such", 404), ("_OTHER", "other", "404"))]
    for seconds in (0.0, 0.00025, 0.0003, 0.001, 0.049, 0.05, 0.7, 3.0, 11.0, 100.0):
        for raw, labels in cases:
            rt.tally.observe(*raw, seconds)
            hist.labels(*labels).observe(seconds)
    rt.request_finished(431, started=False)  # a refusal: the runtime tallies it, as the policy counts it
    hist.labels("_OTHER", "other", "431").observe(0.0)
    for path, kind in (("/fault/crash", "crash"), ("/fault/crash", "crash"), ("/_lab/kill", "kill")):
        rt.tally.fault(path)
        faults.labels(kind).inc()
    disable_created_metrics()  # ours has no *_created series: nothing here reads them
    try:
        expected = generate_latest(theirs)
    finally:
        enable_created_metrics()
    assert _text(_Families(rt.tally.regions)) == expected


def test_a_shared_tally_renders_what_one_process_would():
    """Two workers' regions, added up at scrape time, give the text of one process that served it all."""
    first = [("GET", "/", 200, 0.5), ("GET", "/io", 200, 0.125), ("GET", "/", 200, 3.0)]
    second = [("GET", "/io", 200, 0.25), ("POST", "/", 405, 0.0001220703125), ("GET", "/", 200, 12.0)]
    shared = tally.Regions(2, shared=True)

    def work(index: int, observations: list) -> None:
        t = shared.tally(index, faults=True)
        for obs in observations:
            t.observe(*obs)
        t.fault("/fault/leak")

    for pid in [_in_child(lambda: work(0, first)), _in_child(lambda: work(1, second))]:
        assert _exited(pid) == 0
    alone = tally.Regions(1, shared=False).tally(0, faults=True)
    for obs in first + second:  # durations are binary fractions: their sum is exact in any order
        alone.observe(*obs)
    alone.fault("/fault/leak")
    alone.fault("/fault/leak")
    assert _text(_Families(shared)) == _text(_Families(alone.regions))


def test_a_dead_workers_counts_stay_and_its_successor_counts_on():
    """Slot 0's worker is SIGKILLed; the next worker in slot 0 adds to its rows: never backwards, never twice."""
    shared = tally.Regions(3, shared=True)
    r, w = os.pipe()

    def victim() -> None:
        t = shared.tally(0, faults=True)
        for _ in range(5):
            t.observe("GET", "/", 200, 0.001)
        t.fault("/fault/crash")  # counted before it strikes
        os.write(w, b"x")
        time.sleep(60)

    a = _in_child(victim)
    try:
        assert os.read(r, 1) == b"x"
        b = _in_child(lambda: [shared.tally(1, faults=True).observe("GET", "/", 200, 0.001) for _ in range(7)])
        assert _exited(b) == 0
        seen = [_totals(shared)]
        os.kill(a, signal.SIGKILL)
        assert _exited(a) == -signal.SIGKILL
        seen.append(_totals(shared))
        assert seen[0][0] == seen[1][0] == 12 and sum(seen[1][1]) == 1  # the victim's 5 and its fault stay

        def successor() -> None:
            t = shared.tally(0, faults=True)
            for _ in range(3):
                t.observe("GET", "/", 200, 0.001)
            t.observe("POST", "/echo", 200, 0.001)

        c = _in_child(successor)
        assert _exited(c) == 0
        seen.append(_totals(shared))
        assert seen[-1][0] == 16 and sum(seen[-1][1]) == 1
        assert [n for n, _ in seen] == sorted(n for n, _ in seen)  # never backwards
        base = shared.start  # region 0: rows in use, then the pid counting there
        assert shared.q[base] == 2 and shared.q[base + 1] == c  # the successor found the victim's row: 2 rows, not 3
    finally:
        os.close(r)
        os.close(w)
        try:
            os.kill(a, signal.SIGKILL)
            os.waitpid(a, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_a_full_region_counts_the_rest_in_its_overflow_row():
    t = tally.Regions(1, shared=False).tally(0, faults=False)
    n = tally.ROWS + 10  # distinct label sets: one status each
    for status in range(1000, 1000 + n):
        t.observe("GET", "/", status, 0.001)
    rows, _ = t.regions.read()
    assert len(rows) == tally.ROWS and sum(sum(c[:-1]) for c in rows.values()) == n
    (hist, _faults) = text_string_to_metric_families(_text(_Families(t.regions)).decode())
    overflow = [s.value for s in hist.samples if s.name.endswith("_count")
                and s.labels["http_response_status_code"] == tally.OTHER_STATUS]
    assert overflow == [n - (tally.ROWS - 1)] and tally.ROWS - 1 == 511  # a row each for 511: README "Metrics"
    assert {"http_request_method": "_OTHER", "http_route": "other", "http_response_status_code": "_OTHER"} in [
        s.labels for s in hist.samples if s.name.endswith("_count")]

# -- real servers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_real_server_metrics_not_counted(model, start_server):
    srv = start_server(model)
    with srv.client() as c:
        for _ in range(5):
            assert c.get("/").status_code == 200
        before = srv.stats()["counters"]["requests"]  # this look counts once ...
        for _ in range(3):
            r = c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        after = srv.stats()["counters"]["requests"]  # ... and so does this one; the scrapes did not
        assert after == before + 1
        fams = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
        hello = [s for s in fams["http_server_request_duration_seconds"].samples
                 if s.name.endswith("_count") and s.labels["http_route"] == "/"]
        assert hello and hello[0].value == 5
        (info,) = fams["webmodels_info"].samples
        assert info.labels["model"] == model and info.labels["pid"] == str(srv.pid)


# -- real servers: every answer is in /metrics, refusals included -------------------------------------------------
BAD = {  # what the codec refuses, as bytes on the wire
    400: b"GET / HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
    431: b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    413: b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n",
}
REFUSED = ("_OTHER", "other")  # the method and route of an answer the policy gave itself


def raw_status(srv: Server, data: bytes) -> int:
    """Send DATA on a new connection; return the status the server answers with."""
    with Conn(srv.host, srv.port, timeout=10) as c:
        try:
            c.send(data)
        except OSError:
            pass  # it answered (and closed) before reading it all: the answer is still there to read
        return c.read_reply().status


def counts(text: str) -> dict[tuple[str, str, str], float]:
    """{(method, route, status): count} of the request histogram in an exposition TEXT."""
    return {(s.labels["http_request_method"], s.labels["http_route"], s.labels["http_response_status_code"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "http_server_request_duration_seconds_count"}


def counted(srv: Server) -> int:
    """counters.requests now, this look included (it counts itself once it is answered)."""
    return srv.stats()["counters"]["requests"] + 1


def balanced(srv: Server, requests: int = 0, slack: int = 0, timeout: float = 10.0) -> dict:
    """Wait until counters.requests is REQUESTS (if given: counted() before, plus what the test sent) and the
    histogram's total count equals it (within SLACK); return the histogram's counts.

    The scrape first: it is not counted anywhere; the stats request then counts every request but itself
    (it is still being answered), so both sides see the same requests — plus one per earlier poll. Polled,
    because the server counts an abandoned connection when it notices the close.
    """
    deadline, polls = time.monotonic() + timeout, 0
    while True:
        hist = counts(srv.get("/metrics").text)
        counted = srv.stats()["counters"]["requests"]
        ok = 0 <= counted - sum(hist.values()) <= slack and (not requests or counted == requests + polls)
        if ok or time.monotonic() > deadline:
            break
        polls += 1
        time.sleep(0.1)
    assert ok, (counted, sum(hist.values()), requests, polls, hist)
    return hist


@pytest.mark.parametrize("model", MODELS)
def test_refusals_and_408_are_in_metrics(model, start_server):
    """400, 413, 431 and a 408 never reached a handler: each is a series (method _OTHER, route other)."""
    srv = start_server(model, "--header-timeout", "1")
    before = counted(srv)
    for status, data in BAD.items():
        assert raw_status(srv, data) == status
    assert raw_status(srv, b"GET / HTTP/1.1\r\nHost: t\r\n") == 408  # half a head, then silence
    hist = balanced(srv, requests=before + 4)
    for status in (400, 413, 431, 408):
        assert hist.get((*REFUSED, str(status))) == 1, (status, hist)


@pytest.mark.parametrize("config", SERVERS)
def test_histogram_total_is_the_stats_request_count_on_every_model(config, start_server):
    """After good and bad requests of every kind: sum of the histogram's counts == counters.requests."""
    model, *flags = SERVERS[config]
    srv = start_server(model, *flags, "--header-timeout", "1")
    before = counted(srv)
    with srv.client() as c:
        for path in ("/", "/", "/io?ms=5", "/bytes?kb=2", "/nope", "/cpu?ms=bad", "/fault/raise"):
            c.get(path)
        c.post("/", content=b"x")  # 405
        c.request("PURGE", "/")  # an unknown method
        c.post("/echo", content=b"y" * 3000)
    for data in BAD.values():
        raw_status(srv, data)
    assert raw_status(srv, b"GET /io HTTP/1.1\r\nHost: t\r\n") == 408
    with Conn(srv.host, srv.port) as c:  # half a head, abandoned: the server counts it when it sees the close
        c.send(b"GET / HT")
    hist = balanced(srv, requests=before + 15)  # 10 + 3 refused + a 408 + the abandoned one
    assert hist[(*REFUSED, "400")] == 2, hist  # the malformed head and the abandoned one


@pytest.mark.parametrize("flags", [("threadpool",), ("prefork", "--engine", "threads", "--workers", "1")],
                         ids=["threadpool", "prefork-threads"])
def test_the_503_at_admission_is_in_metrics_once(flags, start_server):
    srv = start_server(*flags, "--threads", "1", "--queue", "0")
    before = counted(srv)
    statuses: list[int] = []  # (no stats poll meanwhile: its new connection would get the 503 itself)
    sent = refused = 0
    while 503 not in statuses and len(statuses) < 8:
        with Conn(srv.host, srv.port) as hog:
            hog.get("/io?ms=2000")  # accepted first, so admitted: it holds the one thread for 2 s ...
            # ... and the probe finds it busy — unless it came before the hog's thread had started on it: then
            # it was admitted too, waited its turn and got a 200. So give the hog a head start, longer each try.
            time.sleep(min(1.0, 0.05 * 2 ** len(statuses)))
            statuses.append(raw_status(srv, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
            hog_status = hog.read_reply().status
            # (a hog may itself find the thread still letting go of the last probe, on a busy machine: a 503 too)
            assert hog_status in (200, 503), hog_status
            sent += 2
            refused += (statuses[-1] == 503) + (hog_status == 503)
    assert statuses[-1] == 503, statuses
    hist = balanced(srv, requests=before + sent)  # each hog, each probe
    assert hist.get((*REFUSED, "503")) == refused, hist


def test_prefork_sum_over_workers_is_monotonic_across_a_worker_kill(start_server):
    srv = start_server("prefork", "--workers", "3")

    def count() -> float:
        fams = text_string_to_metric_families(srv.get("/metrics").text)
        return sum(s.value for f in fams for s in f.samples
                   if s.name == "http_server_request_duration_seconds_count" and s.labels["http_route"] == "/")

    with srv.client() as c:
        for _ in range(30):
            c.get("/")
    first = count()
    assert first == 30  # whichever worker answers, it reports all three
    pids = srv.stats()["processes"]
    workers = [p["pid"] for p in pids if p["role"] == "worker"]
    with srv.client() as c:
        r = c.post("/_lab/kill", params={"target": "worker", "pid": workers[0]})
        assert r.status_code == 202
    wait_for(lambda: workers[0] not in [p["pid"] for p in srv.stats()["processes"]] and
             srv.stats()["counters"]["workers"] == 3, 10, 0.05, "the respawn")
    seen = [first]
    with srv.client() as c:
        for i in range(20):
            c.get("/")
            if i % 5 == 0:
                seen.append(count())
    seen.append(count())
    assert seen == sorted(seen) and seen[-1] == 50, seen
    fams = {f.name: f for f in text_string_to_metric_families(srv.get("/metrics").text)}
    restarts = {s.labels["reason"]: s.value for s in fams["webmodels_worker_restarts"].samples}
    assert restarts["signal"] == 1
    assert [s.value for s in fams["webmodels_faults_injected"].samples if s.labels["kind"] == "kill"] == [1]


class _Loop(threading.Thread):
    """Call FN in a loop until stopped; FN's errors are ignored (a killed worker resets its connections)."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.stopped = fn, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.fn()
            except Exception:  # noqa: BLE001
                time.sleep(0.005)

    def stop(self) -> None:
        self.stopped.set()
        self.join(20)


@pytest.mark.parametrize("engine", ["sync", "loop"])
def test_prefork_counters_never_go_backwards_while_workers_are_killed_under_load(engine, start_server):
    """Kill a worker five times (one of them by a crash fault) under load, scraping all along."""
    srv = start_server("prefork", "--engine", engine, "--workers", "3")
    close = b"Connection: close\r\n"
    load = [_Loop(lambda: raw_status(srv, b"GET / HTTP/1.1\r\nHost: t\r\n" + close + b"\r\n")) for _ in range(2)]
    scrapes: list[dict] = []
    faults: list[float] = []

    def scrape() -> None:
        text = srv.get("/metrics").text
        scrapes.append(counts(text))
        faults.append(sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                          if s.name == "webmodels_faults_injected_total"))
        time.sleep(0.02)

    scraper = _Loop(scrape)
    for t in (*load, scraper):
        t.start()
    for pid in [p["pid"] for p in srv.stats()["per_worker"]]:  # shared pages, never a file (README "Metrics")
        with open(f"/proc/{pid}/maps") as f:
            files = {line.split()[-1] for line in f if len(line.split()) > 5}
        assert not {name for name in files if name.startswith(("/dev/shm", "/tmp"))}, files
    try:
        for round_ in range(5):
            workers = wait_for(lambda: len(w := [p["pid"] for p in srv.stats()["per_worker"]]) == 3 and w,
                               10, 0.05, "three workers")
            if round_ == 2:  # a crash of whichever worker answers: it counts the fault first, then dies of it
                with pytest.raises(Exception):
                    srv.get("/fault/crash", headers={"Connection": "close"})
            else:
                os.kill(workers[round_ % 3], signal.SIGKILL)
            wait_for(lambda: not set(workers) <= {p["pid"] for p in srv.stats()["per_worker"]}, 10, 0.05,
                     "a worker gone")
            mark = len(scrapes)  # scrapes on the new set of workers, under load, before the next kill
            wait_for(lambda: len(scrapes) >= mark + 2, 20, 0.02, "two more scrapes")
    finally:
        for t in (*load, scraper):
            t.stop()
    assert len(scrapes) >= 10 and scrapes[-1][("GET", "/", "200")] > scrapes[0].get(("GET", "/", "200"), 0)
    for before, after in zip(scrapes, scrapes[1:]):
        assert all(after.get(k, -1) >= n for k, n in before.items()), (before, after)
    assert faults == sorted(faults) and faults[-1] >= 1
    # Exact, but for a worker killed between counting a request for /_lab/stats and tallying it (microseconds)
    balanced(srv, slack=4)
