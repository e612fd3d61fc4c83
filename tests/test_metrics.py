"""`/metrics`: the exposition parses, labels are route templates, scrapes are not counted, prefork sums.

Unit tests drive app.dispatch_sync with parsed requests (no sockets); the multiprocess store is tested
with processes forked here (no prefork server); a few integration tests use real servers on port 0.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from webmodels import app, metrics
from webmodels.codec import TIMEOUT_408, RequestParser
from webmodels.config import build_config
from webmodels.runtime import Runtime

from .support import MODELS, wait_for


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
    assert len(buckets) == len(metrics.BUCKETS) + 1 and buckets[-1] == "+Inf"


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
    app.refuse(TIMEOUT_408, rt)
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
    resp = asyncio.run(app.dispatch_fast(request("GET", "/metrics"), rt))  # a coroutine: the scrape waits
    assert resp.status == 200 and rt.counters()["requests"] == 0


# -- the multiprocess store, without prefork ------------------------------------------------------------------------
def _child(store: metrics.MultiprocessStore, n: int, w: int) -> None:
    """In a forked child: count N requests into the store, tell the parent, then wait to be killed or leave."""
    code = 1
    try:
        rt = Runtime(build_config("prefork", {}, {}))
        m = metrics.Metrics(rt, store)
        for _ in range(n):
            m.observe("GET", "/", 200, 0.001)
        m.fault("/fault/crash")
        os.write(w, b"x")
        time.sleep(30)
        code = 0
    finally:
        os._exit(code)


def _fork_writer(store, n: int) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(store, n, w)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    return pid


def _totals(store, live) -> tuple[float, float]:
    count = faults = 0.0
    for fam in store.collect(live):
        for s in fam.samples:
            if s.name == "http_server_request_duration_seconds_count":
                count += s.value
            elif s.name == "webmodels_faults_injected_total":
                faults += s.value
    return count, faults


def test_store_sums_processes_and_survives_a_kill(tmp_path):
    rt = Runtime(build_config("prefork", {}, {}))
    store = metrics.MultiprocessStore.create(rt, base=str(tmp_path))
    metrics._store = None  # create() sets the module's store for a master; this test process is not one
    a = _fork_writer(store, 5)
    b = _fork_writer(store, 7)
    try:
        assert _totals(store, [a, b]) == (12, 2)
        os.kill(a, signal.SIGKILL)
        os.waitpid(a, 0)
        seen = [_totals(store, [b])]  # a is gone: folded into the archive by this scrape
        assert seen[-1] == (12, 2)
        names = sorted(os.listdir(store.path))
        assert f"histogram_{a}.db" not in names and "histogram_retired.db" in names, names
        c = _fork_writer(store, 3)  # a respawn
        seen.append(_totals(store, [b, c]))
        store.retire(c)  # the master's prompt fold (c is still running: its file is folded as it stands)
        seen.append(_totals(store, [b]))
        assert seen[-2] == seen[-1] == (15, 3)
        assert all(x[0] <= y[0] for x, y in zip(seen, seen[1:]))  # never backwards
    finally:
        for pid in (a, b, locals().get("c")):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        store.close()
    assert not os.path.exists(store.path)


def test_stale_directories_of_dead_masters_are_swept(tmp_path):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a pid that is certainly dead now
    stale = tmp_path / f"{metrics.DIR_PREFIX}{pid}-123"
    stale.mkdir()
    mine = tmp_path / f"{metrics.DIR_PREFIX}{os.getpid()}-456"
    mine.mkdir()
    metrics.sweep_stale(str(tmp_path))
    assert not stale.exists() and mine.exists()


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


def test_single_process_histogram_renders_exactly_as_prometheus_client_histogram():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    ours = metrics.RequestHistogram()
    reg_ours, reg_theirs = CollectorRegistry(), CollectorRegistry()
    reg_ours.register(ours)
    theirs = Histogram(metrics.DURATION, metrics.DURATION_HELP, metrics.LABELS, buckets=metrics.BUCKETS,
                       registry=reg_theirs)
    m = metrics.Metrics(runtime())
    m.hist = ours
    for seconds in (0.0, 0.00025, 0.0003, 0.001, 0.049, 0.05, 0.7, 3.0, 11.0, 100.0):
        for labels in (("GET", "/", 200), ("POST", "/echo", 500)):
            m.observe(*labels, seconds)
            theirs.labels(*m.labels(*labels)).observe(seconds)
    assert generate_latest(reg_ours) == generate_latest(reg_theirs)
