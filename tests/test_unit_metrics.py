"""`/metrics` without a server: the exposition parses, labels are route templates, scrapes are not counted, the
shared tally renders what prometheus_client would and keeps a dead worker's counts.

The handler is driven with parsed requests (no sockets); the shared tally is tested with processes forked here
(no prefork server). Real servers: test_conformance_metrics.py (every configuration) and test_master.py (across
worker deaths).
"""

from __future__ import annotations

import os
import signal
import time
import warnings

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from webmodels import app, metrics, tally
from webmodels.codec import RequestParser
from webmodels.config import build_config
from webmodels.runtime import Runtime


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


def test_scrape_waits_as_an_effect_on_the_event_loop(monkeypatch):
    """The /proc reading happens on a helper thread; the handler yields Sleep meanwhile (loop keeps serving)."""
    import asyncio
    import threading

    # the reading is held until the handler has yielded once: a fast helper thread (or a preempted caller: CI)
    # must not let the scrape finish before its first wait, and a reading done inline would never be released
    released, read_tree = threading.Event(), metrics.read_tree
    monkeypatch.setattr(metrics, "read_tree", lambda roles: (released.wait(5), read_tree(roles))[1])
    rt = runtime()
    gen = app.handle(request("GET", "/metrics"), rt)
    effects = []
    try:
        effect = next(gen)
        while True:
            effects.append(effect)
            released.set()
            time.sleep(effect.seconds)
            effect = gen.send(None)
    except StopIteration as stop:
        resp = stop.value
    assert resp.status == 200 and effects and all(e.seconds <= 0.001 for e in effects)
    monkeypatch.setattr(metrics, "read_tree", read_tree)
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
    with warnings.catch_warnings():
        # Python 3.12+ warns that pytest-xdist's process has threads: the child takes no lock they may hold (it
        # writes the shared tally and leaves with os._exit), as a prefork worker forked by its master does
        warnings.simplefilter("ignore", DeprecationWarning)
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
