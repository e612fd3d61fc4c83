"""The handler: one set of routes, written once, run unchanged by every model.

Routes that wait yield an effect (see effects.py); routes that burn CPU or inject a fault do it inline on
purpose, because holding the GIL, blocking the loop or killing the process *is* the experiment. Call
`dispatch_sync` from a thread or process, `dispatch_fast` from the event loop (its answer, or a coroutine
to await when the handler must wait): both count the request, turn any exception into a logged 500, and
never let one request take the server down — except the fault routes, whose job is exactly that.
"""

from __future__ import annotations

import os
import random
import threading
import time
import traceback
from types import GeneratorType
from typing import Any, Callable, Coroutine, Generator

from . import events, faults, metrics, stats, tally
from .codec import Request, Response, json_response
from .effects import Acquire, Handler, Release, Sleep, run_async, run_sync
from .exitcodes import EXIT_CRASH
from .log import access, log
from .runtime import Runtime

HELLO = b"Hello, world!"


class BadParam(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _int(req: Request, name: str, default: int | None, lo: int, hi: int) -> int:
    raw = req.query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise BadParam(name, f"missing parameter {name!r} (an integer {lo}-{hi})")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParam(name, f"parameter {name!r} must be an integer {lo}-{hi}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadParam(name, f"parameter {name!r} must be between {lo} and {hi}, got {value}")
    return value


def _choice(req: Request, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = req.query.get(name, default)
    if value not in choices:
        raise BadParam(name, f"parameter {name!r} must be one of {', '.join(choices)}, got {value!r}")
    return value


# -- plain routes -----------------------------------------------------------------------------------------------
def hello(req: Request, rt: Runtime) -> Response:
    return Response(200, HELLO)


def io(req: Request, rt: Runtime) -> Handler:
    ms = _int(req, "ms", 100, 0, 60000)
    yield Sleep(ms / 1000)
    return json_response(200, {"waited_ms": ms})


def io_in_c(req: Request, rt: Runtime) -> Response:
    """Simulated I/O that blocks inside C (ctypes nanosleep), where no monkey-patch reaches: green threads stall."""
    ms = _int(req, "ms", 100, 0, 60000)
    faults.block_os_thread(ms / 1000)
    return json_response(200, {"waited_ms": ms, "in": "C"})


def burn(ms: float) -> int:
    """Spend MS milliseconds of this thread's CPU time in pure Python; return the loop count.

    thread_time, not wall time: a thread waiting for the GIL does not get credit, so each request costs
    the same CPU whatever the model — and the thread pool's queueing behind the GIL shows as latency.
    """
    deadline = time.thread_time() + ms / 1000
    n = 0
    while time.thread_time() < deadline:
        for _ in range(200):
            n += 1
    return n


def cpu(req: Request, rt: Runtime) -> Response:
    ms = _int(req, "ms", 10, 0, 10000)
    t0 = time.monotonic()
    loops = burn(ms)
    return json_response(200, {"burned_ms": ms, "wall_ms": round((time.monotonic() - t0) * 1000, 3),
                               "loops": loops})


_payloads: dict[int, bytes] = {}


def bytes_(req: Request, rt: Runtime) -> Response:
    kb = _int(req, "kb", 1, 0, 10240)
    body = _payloads.get(kb)
    if body is None:
        body = b"x" * (kb * 1024)
        if len(_payloads) < 64:
            _payloads[kb] = body
    return Response(200, body, "application/octet-stream")


def whoami(req: Request, rt: Runtime) -> Response:
    t = threading.current_thread()
    return json_response(200, {
        "model": rt.model, "pid": os.getpid(), "ppid": os.getppid(), "thread_id": threading.get_ident(),
        "thread_name": t.name, "worker_index": rt.worker_index, "requests_served": rt.requests_here(),
    })


# One counter per mode, global to the process: threads of one process share it, processes don't.
COUNTERS = {"unsafe": 0, "locked": 0}


def counter(req: Request, rt: Runtime) -> Handler:
    mode = _choice(req, "mode", "unsafe", ("unsafe", "locked"))
    op = _choice(req, "op", "incr", ("incr", "read", "reset"))
    window_ms = _int(req, "window_ms", 1, 0, 1000)
    if op == "reset":
        COUNTERS[mode] = 0
    elif op == "incr":
        if mode == "locked":
            yield Acquire("counter")
        try:
            value = COUNTERS[mode]  # read ...
            yield Sleep(window_ms / 1000)  # ... yield to others (threads switch; the loop runs other tasks) ...
            COUNTERS[mode] = value + 1  # ... write back: whoever incremented meanwhile is overwritten
        finally:
            if mode == "locked":
                yield Release("counter")
    return json_response(200, {"mode": mode, "value": COUNTERS[mode], "pid": os.getpid(),
                               "worker_index": rt.worker_index})


def echo(req: Request, rt: Runtime) -> Response:
    ctype = (req.header(b"content-type") or b"application/octet-stream").decode("latin-1")
    return Response(200, req.body, ctype)


def lab_stats(req: Request, rt: Runtime) -> Response:
    return json_response(200, stats.snapshot(rt))


def metrics_(req: Request, rt: Runtime) -> Handler:
    return metrics.response(rt)


# -- faults -----------------------------------------------------------------------------------------------------
def fault_crash(req: Request, rt: Runtime) -> Response:
    log.warning("fault: /fault/crash — exiting with status %d, no cleanup", EXIT_CRASH)
    faults.crash()
    raise AssertionError("unreachable")


def fault_segfault(req: Request, rt: Runtime) -> Response:
    log.warning("fault: /fault/segfault — reading address 0")
    faults.segfault()
    raise AssertionError("unreachable")


def fault_hang(req: Request, rt: Runtime) -> Response:
    s = _int(req, "s", 3600, 0, 86400)
    log.warning("fault: /fault/hang — blocking %s for %d s", threading.current_thread().name, s)
    faults.hang(s)
    return json_response(200, {"hung_s": s})


def fault_leak(req: Request, rt: Runtime) -> Response:
    mb = _int(req, "mb", 10, 1, 4096)
    total = faults.leak(mb)
    return json_response(200, {"leaked_mb": mb, "total_leaked_mb": total, "pid": os.getpid()})


def fault_raise(req: Request, rt: Runtime) -> Response:
    raise RuntimeError("injected fault: /fault/raise")


def lab_kill(req: Request, rt: Runtime) -> Response:
    target = _choice(req, "target", "worker", ("worker", "process"))
    if target == "process":
        pid = rt.server_pid()
        log.warning("kill: target=process — SIGKILL to the whole server (pid %d)", pid)
        # until_close: the reply ends when the process dies, so a client (the chaos injector) that times the
        # kill by its reply's end cannot see a user request answered after it (soak: 1 unattributed refusal)
        return json_response(202, {"killed": "process", "pid": pid}, close=True, until_close=True,
                             after=rt.kill_process)
    workers = rt.worker_pids()
    if not workers:
        return json_response(409, {"error": f"the {rt.model} model has no worker processes; "
                                            "use target=process", "param": "target"})
    pid_raw = req.query.get("pid")
    if pid_raw:
        pid = _int(req, "pid", None, 1, 2**31)
        if pid not in workers:
            raise BadParam("pid", f"pid {pid} is not a worker of this server (workers: {workers})")
    else:
        # Prefer another worker so this reply still gets out; with one worker it has to be ourselves.
        others = [p for p in workers if p != os.getpid()]
        pid = random.choice(others or workers)
    log.warning("kill: SIGKILL to worker %d", pid)
    mine = pid == os.getpid()  # a last worker kills itself after its reply, which then ends at its death
    kill = _kill_later(pid) if mine else None
    if kill is None:
        _sigkill(pid)
    return json_response(202, {"killed": "worker", "pid": pid}, close=mine, until_close=mine, after=kill)


def lab_scale(req: Request, rt: Runtime) -> Response:
    delta = _int(req, "delta", 1, -16, 16)
    target = rt.scale(delta)
    if target is None:
        return json_response(409, {"error": f"the {rt.model} model has no worker processes to scale",
                                    "param": "delta"})
    return json_response(200, {"target_workers": target, "delta": delta})


def _sigkill(pid: int) -> None:
    import signal
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_later(pid: int) -> Callable[[], None]:
    return lambda: _sigkill(pid)


def options_server(req: Request, rt: Runtime) -> Response:
    """`OPTIONS *` (RFC 9110 9.3.7): the methods this server implements anywhere."""
    return Response(200, b"", headers=[("Allow", SERVER_ALLOW)])


Route = Callable[[Request, Runtime], Any]
ROUTES: dict[str, tuple[tuple[str, ...], Route]] = {
    "*": (("OPTIONS",), options_server),  # the codec gives the asterisk form to OPTIONS only
    "/": (("GET",), hello),
    "/io": (("GET",), io),
    "/io-in-c": (("GET",), io_in_c),  # blocks the OS thread outside Python: what gevent's patching cannot cover
    "/cpu": (("GET",), cpu),
    "/bytes": (("GET",), bytes_),
    "/whoami": (("GET",), whoami),
    "/counter": (("GET",), counter),
    "/echo": (("POST",), echo),
    "/_lab/stats": (("GET",), lab_stats),
    metrics.PATH: (("GET",), metrics_),  # never accounted: see dispatch_sync
}
# The fault routes come from the one fault table (faults.FAULTS); kill-worker and kill-process share /_lab/kill.
FAULT_HANDLERS: dict[str, Route] = {"crash": fault_crash, "segfault": fault_segfault, "hang": fault_hang,
                                    "leak": fault_leak, "raise": fault_raise, "kill-worker": lab_kill,
                                    "kill-process": lab_kill}
FAULT_ROUTES: dict[str, tuple[tuple[str, ...], Route]] = {
    **{f.path: (f.methods, FAULT_HANDLERS[f.kind]) for f in faults.FAULTS},
    "/_lab/scale": (("POST",), lab_scale),  # a control, not a fault, behind --faults too
}

tally.register_routes(ROUTES, FAULT_ROUTES)  # /metrics labels these templates; any other path is `other`
SERVER_ALLOW = ", ".join(sorted({m for methods, _ in [*ROUTES.values(), *FAULT_ROUTES.values()] for m in methods}))


def handle(req: Request, rt: Runtime) -> Generator[Any, Any, Response]:
    """Route REQ; a generator so effect-yielding routes and plain ones look the same to the drivers."""
    route = _route(req, rt)
    if isinstance(route, Response):
        return route
    try:
        result = route(req, rt)
        if isinstance(result, GeneratorType):  # not typing.Generator: its isinstance costs ~0.3 µs a request
            result = yield from result
    except BadParam as exc:
        return _bad_param(exc)
    return result


def _route(req: Request, rt: Runtime) -> Route | Response:
    """The route function for REQ, or the answer when there is none (404, 405). Counts a fault route entered."""
    entry = ROUTES.get(req.path)
    fault = False
    if entry is None and rt.config.faults:
        entry = FAULT_ROUTES.get(req.path)
        fault = entry is not None and faults.kind_of(req.path) is not None  # (/_lab/scale is no fault)
    if entry is None:
        return json_response(404, {"error": f"no route {req.path}"})
    methods, fn = entry
    if req.method not in methods:
        return json_response(405, {"error": f"{req.method} not allowed on {req.path}"},
                             headers=[("Allow", ", ".join(methods))])
    if fault:
        metrics.fault(rt, req.path)  # before it strikes: a crashing worker's count stays in its tally region
    if rt.config.faults and req.path in FAULT_ROUTES:
        events.route_entered(rt, req)  # the lab's event log, before it strikes (webmodels.events)
    return fn


def _bad_param(exc: BadParam) -> Response:
    return json_response(400, {"error": str(exc), "param": exc.param})


def _internal_error(req: Request) -> Response:
    log.error("500 on %s %s:\n%s", req.method, req.target, traceback.format_exc().rstrip())
    return json_response(500, {"error": "internal server error"})


def _account(req: Request, rt: Runtime, resp: Response | None, t0: float) -> None:
    """Count the finished request (no response = a 500), tally it for /metrics, write its access-log line."""
    status = resp.status if resp is not None else 500
    rt.request_finished(status)
    rt.tally.observe(req.method, req.path, status, time.monotonic() - t0)
    if resp is not None and access.isEnabledFor(20):
        access.info("%s %s %d %d %.1fms", req.method, req.target, resp.status, len(resp.body),
                    (time.monotonic() - t0) * 1000)


def dispatch_sync(req: Request, rt: Runtime) -> Response:
    """Run the handler on the calling thread, blocking on its effects."""
    if req.path == metrics.PATH:  # outside the accounting: a scrape must not show up in what it reports
        return run_sync(handle(req, rt))
    t0 = time.monotonic()
    rt.request_started()
    resp = None
    try:
        resp = run_sync(handle(req, rt))
    except Exception:
        resp = _internal_error(req)
    finally:
        _account(req, rt, resp, t0)
    return resp


def dispatch_fast(req: Request, rt: Runtime) -> Response | Coroutine[Any, Any, Response]:
    """Run the handler until it first waits: its Response if it never does, else a coroutine to await.

    The event loop's fast path: most routes never yield an effect, and answering them right here saves a
    task per request. It is `handle` unrolled: a route that returns a Response is called directly (no
    generator to create and exhaust); one that returns a generator is driven to its first effect. Once
    started, the handler is not restarted: the coroutine resumes it at its first effect. Counting, 500s and
    the access log are exactly dispatch_sync's.
    """
    if req.path == metrics.PATH:  # outside the accounting (see dispatch_sync); it waits, so a coroutine
        return run_async(handle(req, rt))
    t0 = time.monotonic()
    rt.request_started()
    try:
        route = _route(req, rt)
        if isinstance(route, Response):
            resp = route
        else:
            result = route(req, rt)
            if isinstance(result, GeneratorType):
                gen = _guarded(result)
                try:
                    effect = next(gen)
                except StopIteration as stop:
                    resp = stop.value
                else:
                    return _resume_async(req, rt, _resumed(effect, gen), t0)
            else:
                resp = result
    except BadParam as exc:
        resp = _bad_param(exc)
    except Exception:
        resp = _internal_error(req)
    except BaseException:
        _account(req, rt, None, t0)
        raise
    _account(req, rt, resp, t0)
    return resp


def _guarded(gen: Generator[Any, Any, Response]) -> Generator[Any, Any, Response]:
    """GEN, with a BadParam raised anywhere in it answered 400 (as `handle` does)."""
    try:
        return (yield from gen)
    except BadParam as exc:
        return _bad_param(exc)


def _resumed(first: Any, gen: Generator[Any, Any, Response]) -> Generator[Any, Any, Response]:
    """GEN as if not yet started: yield the effect it already yielded, then carry on."""
    yield first
    return (yield from gen)


async def _resume_async(req: Request, rt: Runtime, gen: Generator[Any, Any, Response], t0: float) -> Response:
    resp = None
    try:
        resp = await run_async(gen)
    except Exception:
        resp = _internal_error(req)
    finally:
        _account(req, rt, resp, t0)
    return resp
