"""The shared handler without sockets: `app.handle` driven by `effects.run_sync` on a plain Runtime."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from webmodels import app, effects
from webmodels.codec import Request, RequestParser, Response
from webmodels.config import build_config
from webmodels.effects import Acquire, Release, Sleep
from webmodels.runtime import Runtime


def runtime(faults: bool = False) -> Runtime:
    return Runtime(build_config("threadpool", {"faults": faults or None}, environ={}))


def request(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Request:
    """Build a Request the way the servers do: through the codec."""
    head = f"{method} {target} HTTP/1.1\r\nHost: t\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    (req,) = RequestParser().feed(head.encode() + b"\r\n" + body)
    assert isinstance(req, Request)
    return req


def call(method: str, target: str, rt: Runtime | None = None, **kw: object) -> Response:
    return effects.run_sync(app.handle(request(method, target, **kw), rt or runtime()))  # type: ignore[arg-type]


def body(resp: Response) -> dict:
    assert resp.content_type == "application/json"
    return json.loads(resp.body)


# -- routes ---------------------------------------------------------------------------------------------------
def test_hello() -> None:
    resp = call("GET", "/")
    assert (resp.status, resp.body) == (200, b"Hello, world!")
    assert resp.content_type.startswith("text/plain")


def test_io_yields_a_sleep_effect_instead_of_sleeping() -> None:
    gen = app.handle(request("GET", "/io?ms=250"), runtime())
    t0 = time.monotonic()
    effect = next(gen)
    assert time.monotonic() - t0 < 0.1  # the handler itself does not wait
    assert effect == Sleep(0.25)
    with pytest.raises(StopIteration) as stop:
        gen.send(None)
    resp = stop.value.value
    assert resp.status == 200 and body(resp) == {"waited_ms": 250}


def test_io_run_sync_really_waits() -> None:
    t0 = time.monotonic()
    resp = call("GET", "/io?ms=50")
    assert time.monotonic() - t0 >= 0.045
    assert body(resp) == {"waited_ms": 50}


def test_io_default_and_bounds() -> None:
    gen = app.handle(request("GET", "/io"), runtime())
    assert next(gen) == Sleep(0.1)  # default 100 ms
    assert call("GET", "/io?ms=0").status == 200
    assert call("GET", "/io?ms=60001").status == 400
    assert call("GET", "/io?ms=-1").status == 400


def test_cpu() -> None:
    resp = call("GET", "/cpu?ms=20")
    data = body(resp)
    assert resp.status == 200 and data["burned_ms"] == 20 and data["loops"] > 0
    assert data["wall_ms"] >= 19


def test_bytes_length() -> None:
    for kb in (0, 1, 3):
        resp = call("GET", f"/bytes?kb={kb}")
        assert resp.status == 200 and len(resp.body) == kb * 1024
    assert len(call("GET", "/bytes").body) == 1024


def test_whoami() -> None:
    data = body(call("GET", "/whoami"))
    assert {"model", "pid", "ppid", "thread_id", "thread_name", "worker_index", "requests_served"} <= set(data)
    assert data["model"] == "threadpool" and data["worker_index"] is None  # a Runtime names the model it serves
    assert data["pid"] == os.getpid() and data["ppid"] == os.getppid()
    assert data["thread_id"] == threading.get_ident()


def test_echo_returns_the_body_and_its_type() -> None:
    resp = call("POST", "/echo", body=b'{"x": 1}', headers={"Content-Type": "application/json"})
    assert (resp.status, resp.body, resp.content_type) == (200, b'{"x": 1}', "application/json")
    resp = call("POST", "/echo", body=b"\x00\xff")
    assert resp.body == b"\x00\xff" and resp.content_type == "application/octet-stream"


def test_stats_document() -> None:
    data = body(call("GET", "/_lab/stats"))
    assert data["model"] == "threadpool" and data["engine"] == "threads"
    assert {"config", "started_at", "uptime_s", "processes", "totals", "counters"} <= set(data)
    assert [p["pid"] for p in data["processes"]] == [os.getpid()]
    assert data["processes"][0]["role"] == "main"
    assert data["config"]["threads"] == 32


# -- errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target, param", [
    ("/io?ms=abc", "ms"), ("/io?ms=99999999", "ms"), ("/cpu?ms=10001", "ms"), ("/cpu?ms=1.5", "ms"),
    ("/bytes?kb=-3", "kb"), ("/bytes?kb=10241", "kb"), ("/counter?mode=racy", "mode"),
    ("/counter?op=explode", "op"), ("/counter?window_ms=x", "window_ms"),
])
def test_bad_parameter_is_400_naming_it(target: str, param: str) -> None:
    resp = call("GET", target)
    assert resp.status == 400
    data = body(resp)
    assert data["param"] == param
    assert param in data["error"]


def test_unknown_path_is_404() -> None:
    resp = call("GET", "/nope")
    assert resp.status == 404 and "/nope" in body(resp)["error"]


@pytest.mark.parametrize("method, target, allow", [
    ("POST", "/", "GET"), ("DELETE", "/io", "GET"), ("GET", "/echo", "POST"), ("PUT", "/_lab/stats", "GET"),
])
def test_wrong_method_is_405_with_allow(method: str, target: str, allow: str) -> None:
    resp = call(method, target)
    assert resp.status == 405
    assert dict(resp.headers)["Allow"] == allow


@pytest.mark.parametrize("method, target", [
    ("GET", "/fault/crash"), ("GET", "/fault/segfault"), ("GET", "/fault/hang?s=1"), ("GET", "/fault/leak"),
    ("GET", "/fault/raise"), ("POST", "/_lab/kill?target=process"), ("POST", "/_lab/kill"),
])
def test_faults_off_means_404(method: str, target: str) -> None:
    # Without --faults none of these may do anything at all (this test would not survive a crash).
    resp = call(method, target, runtime(faults=False))
    assert resp.status == 404


def test_fault_raise_propagates_from_handle_and_dispatch_makes_it_a_500() -> None:
    rt = runtime(faults=True)
    with pytest.raises(RuntimeError):
        effects.run_sync(app.handle(request("GET", "/fault/raise"), rt))
    resp = app.dispatch_sync(request("GET", "/fault/raise"), rt)
    assert resp.status == 500 and body(resp) == {"error": "internal server error"}
    assert app.dispatch_sync(request("GET", "/"), rt).status == 200
    c = rt.counters()
    assert (c["requests"], c["in_flight"], c["errors_5xx"]) == (2, 0, 1)


def test_dispatch_counts_4xx() -> None:
    rt = runtime()
    for target in ("/nope", "/io?ms=x", "/"):
        app.dispatch_sync(request("GET", target), rt)
    c = rt.counters()
    assert (c["requests"], c["errors_4xx"], c["errors_5xx"], c["in_flight"]) == (3, 2, 0, 0)


def test_kill_worker_on_a_model_without_workers_is_409() -> None:
    resp = call("POST", "/_lab/kill?target=worker", runtime(faults=True))
    assert resp.status == 409 and body(resp)["param"] == "target"


def test_kill_bad_target_is_400() -> None:
    resp = call("POST", "/_lab/kill?target=everything", runtime(faults=True))
    assert resp.status == 400 and body(resp)["param"] == "target"


def test_kill_process_answers_first_and_kills_after() -> None:
    rt = runtime(faults=True)
    killed: list[bool] = []
    rt.kill_process = lambda: killed.append(True)  # type: ignore[method-assign]
    resp = call("POST", "/_lab/kill?target=process", rt)
    assert resp.status == 202 and resp.close is True and resp.until_close is True  # ends at the death
    assert body(resp)["pid"] == os.getpid()
    assert killed == []  # not yet: the server sends the reply, then runs resp.after
    assert resp.after is not None
    resp.after()
    assert killed == [True]


def test_leak_keeps_memory() -> None:
    from webmodels import faults
    rt = runtime(faults=True)
    first = body(call("GET", "/fault/leak?mb=1", rt))["total_leaked_mb"]
    resp = call("GET", "/fault/leak?mb=1", rt)
    assert resp.status == 200 and body(resp)["total_leaked_mb"] == first + 1
    del faults._leaked[-2:]  # give it back: this is the test process


# -- /counter -------------------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_counters():
    saved = dict(app.COUNTERS)
    app.COUNTERS.update(unsafe=0, locked=0)
    yield app.COUNTERS
    app.COUNTERS.update(saved)


def test_counter_ops(fresh_counters) -> None:
    rt = runtime()
    assert body(call("GET", "/counter?mode=locked&op=read", rt))["value"] == 0
    for i in range(1, 4):
        data = body(call("GET", "/counter?mode=locked&window_ms=0", rt))
        assert data["value"] == i and data["mode"] == "locked" and data["pid"] == os.getpid()
    assert body(call("GET", "/counter?mode=unsafe&window_ms=0", rt))["value"] == 1  # one counter per mode
    assert body(call("GET", "/counter?mode=locked&op=read", rt))["value"] == 3
    assert body(call("GET", "/counter?mode=locked&op=reset", rt))["value"] == 0
    assert body(call("GET", "/counter?op=read", rt))["mode"] == "unsafe"  # the default mode


def test_counter_locked_brackets_the_window_with_the_lock(fresh_counters) -> None:
    gen = app.handle(request("GET", "/counter?mode=locked&window_ms=5"), runtime())
    assert [next(gen), gen.send(None), gen.send(None)] == [Acquire("counter"), Sleep(0.005), Release("counter")]
    with pytest.raises(StopIteration):
        gen.send(None)
    assert fresh_counters["locked"] == 1


def test_counter_unsafe_loses_updates_across_threads_and_locked_does_not(fresh_counters) -> None:
    rt = runtime()

    def hammer(mode: str) -> None:
        threads = [threading.Thread(target=call, args=("GET", f"/counter?mode={mode}&window_ms=50", rt))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)

    hammer("unsafe")
    hammer("locked")
    assert fresh_counters["locked"] == 8
    assert fresh_counters["unsafe"] < 8  # 8 threads read 0..k inside one 50 ms window: updates are lost
