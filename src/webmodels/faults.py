"""Injected faults: the one table of them, and what each does to the process that serves it.

FAULTS is read by everything that names a fault: the handler's routes (app.FAULT_ROUTES), the chaos schedule
(chaos.py), the Locust injector (`--fault KIND`, loadtest/chaos.py), the soak, and the metrics' `kind` label
(`kind_of`). A kind's name is the same in all of them.

The faults are real, not simulated: a crash is `os._exit`, a segfault is a real SIGSEGV from reading address
0, a hang blocks whatever runs the handler (a pool thread, a worker process, or the whole event loop), a leak
keeps touched memory forever. What the attendee sees afterwards is the model's doing, not ours.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import time
from dataclasses import dataclass

from .exitcodes import EXIT_CRASH

# Which process a fault ends ("" for none: hang, leak and raise hurt while they run and the process lives on).
SERVING = "the process serving it"  # a worker under a master; the whole server for a single-process model
WORKER = "one worker"  # of a master model, picked by the server; another worker answers the request
SERVER = "the whole server"


@dataclass(frozen=True)
class Fault:
    """One kind of fault: the request that injects it and what it ends."""

    kind: str  # its name everywhere: Locust's --fault, the chaos schedule, webmodels_faults_injected{kind}
    path: str  # the route (enabled by --faults)
    methods: tuple[str, ...]
    ends: str  # SERVING, WORKER, SERVER or "" (see above)
    what: str  # one line for --help and the report
    query: str = ""  # what picks this kind on a route two kinds share; the route's first kind is its default
    param: str = ""  # the query parameter sizing it: a hang's seconds, a leak's MiB

    @property
    def ends_process(self) -> bool:
        """True if a process dies of it: the fault takes effect when its request ends, not when it is sent."""
        return bool(self.ends)


ANY = ("GET", "POST")  # POST is what injectors send: a client may re-send a GET whose connection dropped
FAULTS = (
    Fault("crash", "/fault/crash", ANY, SERVING, f"exit at once (status {EXIT_CRASH}): no cleanup, no goodbye"),
    Fault("segfault", "/fault/segfault", ANY, SERVING, "die of a real SIGSEGV (reading address 0)"),
    Fault("hang", "/fault/hang", ANY, "", "block whatever runs the handler for s seconds", param="s"),
    Fault("leak", "/fault/leak", ANY, "", "allocate mb MiB, touch every page, keep it", param="mb"),
    Fault("raise", "/fault/raise", ANY, "", "raise in the handler: answered 500, the process lives on"),
    Fault("kill-worker", "/_lab/kill", ("POST",), WORKER,
          "SIGKILL one worker (`webmodels kill MODEL --worker`): master models only", query="target=worker"),
    Fault("kill-process", "/_lab/kill", ("POST",), SERVER,
          "SIGKILL the whole server (`webmodels kill MODEL --process`)", query="target=process"),
)
BY_KIND = {f.kind: f for f in FAULTS}
KINDS = tuple(BY_KIND)


def request(kind: str, *, hang_s: int = 5, leak_mb: int = 16) -> str:
    """The request target that injects KIND ("/fault/hang?s=5", "/_lab/kill?target=worker")."""
    f = BY_KIND[kind]
    query = [f.query] if f.query else []
    if f.param:
        query.append(f"{f.param}={hang_s if f.param == 's' else leak_mb}")
    return f.path + ("?" + "&".join(query) if query else "")


def kind_of(target: str) -> str | None:
    """The kind a request target injects ("/_lab/kill?target=process" → "kill-process"); None for no fault.

    A path alone names its route's default kind ("/_lab/kill" → "kill-worker", as the handler defaults).
    """
    path, _, query = target.partition("?")
    kinds = [f for f in FAULTS if f.path == path]
    if not kinds:
        return None
    params = query.split("&")
    return next((f.kind for f in kinds if f.query and f.query in params), kinds[0].kind)


def route_kind(route: str) -> str:
    """The kind a route counts under when its query is not known: "/fault/crash" → "crash", "/_lab/kill" → "kill".

    (A kill's target, worker or process, is a field of its own where it is known: the event log, the actions.)
    """
    path = route.partition("?")[0]
    kind = kind_of(path)
    return kind if kind and path != "/_lab/kill" else path.rpartition("/")[2]


# -- the faults themselves -----------------------------------------------------------------------------------------
MIB = 1024 * 1024
PAGE = 4096
_leaked: list[bytearray] = []


def crash() -> None:
    """Exit at once: no finally blocks, no flushing, no goodbye to connected clients."""
    os._exit(EXIT_CRASH)


def segfault() -> None:
    """Die of a real SIGSEGV (reading address 0)."""
    if faulthandler.is_enabled():
        faulthandler.disable()  # it would print a traceback first; the death is the same
    ctypes.string_at(0)


def hang(seconds: float) -> None:
    """Block the calling OS thread without yielding to anyone (not the Sleep effect, and not time.sleep either)."""
    block_os_thread(seconds)


_libc = ctypes.CDLL(None, use_errno=True)
_CHUNK_S = 0.05  # each C sleep at most this long: between two, Python runs pending signal handlers (a master's
# SIGABRT, a stop) as it would in time.sleep


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def block_os_thread(seconds: float) -> None:
    """Sleep SECONDS inside C (nanosleep through ctypes): the OS thread blocks where no Python patch can see.

    ctypes releases the GIL around the call, so a thread pool's other threads keep running (a real OS thread
    blocks, the kernel schedules the rest); an event loop, or gevent's hub — whose monkey-patching turns
    `time.sleep` into a switch to another greenlet — waits with it: this is the blocking call green threads
    cannot make cooperative.
    """
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        chunk = min(left, _CHUNK_S)
        _libc.nanosleep(ctypes.byref(_Timespec(int(chunk), int(chunk % 1 * 1e9))), None)


def leak(mb: int) -> int:
    """Allocate MB MiB, touch every page so it counts in RSS/USS, keep it; return the total leaked MiB."""
    block = bytearray(mb * MIB)  # calloc'd: zero pages are not resident until written
    block[::PAGE] = b"\x01" * len(range(0, len(block), PAGE))
    _leaked.append(block)
    return sum(len(b) for b in _leaked) // MIB
