"""Reuseport window: established connections lost while prefork workers recycle, retire or go away.

A steady stream of fresh connections (CLIENTS clients, each sending `GET /` with `Connection: close` as soon as
connected and pausing PAUSE_S between connections: ≈ 140 connections/s) against `prefork --workers 2`, through
three events: `--max-requests 5` recycling, a SIGHUP every 0.5 s, and a SIGTTIN/SIGTTOU pair every 0.5 s (a
worker removed: its listener closes). A connection whose connect() succeeded and that got no answer is *lost*.

Shared listener vs `--reuseport`, with `net.ipv4.tcp_migrate_req` as this network namespace has it and — when
we may (root, Linux) — in a network namespace of our own with the other setting, so both figures are measured
without touching the host. Why: a closing SO_REUSEPORT listener resets what its queue holds unless the kernel
migrates it; the master keeps every worker's listener open, so only a listener that really closes (a worker
fewer) can lose anything, and a retiring worker drains it first.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import launch
from ..kit import Bench, native_only
from ..report import Charts, Doc
from . import Cells, Scenario

CLIENTS = 3
PAUSE_S = 0.02
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")
CLONE_NEWNET = 0x40000000
EVENTS = ("recycle", "hup", "ttou")


def migrate_req() -> int:
    """This namespace's net.ipv4.tcp_migrate_req (1, 0), or -1 where there is none (Linux < 5.14, not Linux)."""
    try:
        return int(MIGRATE_REQ.read_text())
    except (OSError, ValueError):
        return -1


@dataclass
class Stream:
    """CLIENTS threads opening fresh connections, one request each, PAUSE_S apart."""

    host: str
    port: int
    answered: int = 0
    lost: int = 0
    refused: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Stream:
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for t in self._threads:
            t.start()
        return self

    def _client(self) -> None:
        while not self._stop.is_set():
            try:
                s = socket.create_connection((self.host, self.port), timeout=10)
            except OSError:
                with self._lock:
                    self.refused += 1  # nothing was sent: not a lost request (a client retries it)
                time.sleep(PAUSE_S)
                continue
            ok = False
            with s:
                try:
                    s.sendall(REQUEST)
                    ok = s.recv(64).startswith(b"HTTP/1.1 200")
                except OSError:
                    pass
            with self._lock:
                if ok:
                    self.answered += 1
                else:
                    self.lost += 1
            time.sleep(PAUSE_S)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return {"answered": self.answered, "lost": self.lost, "refused": self.refused}


def measure(event: str, reuseport: bool, seconds: float) -> dict[str, int]:
    """One `prefork --workers 2` through EVENT for SECONDS under the stream: answered, lost, refused."""
    flags = ["--workers", "2"] + (["--max-requests", "5"] if event == "recycle" else [])
    flags += ["--reuseport"] if reuseport else []
    proc = launch.Process(launch.serve_argv("prefork", *flags), env=launch.clean_env())
    try:
        if not proc.wait_listening(20):
            raise RuntimeError(f"prefork did not start:\n{proc.log}")
        stream = Stream(proc.host, proc.port).start()
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            time.sleep(0.5)
            if event == "hup":
                os.kill(proc.pid, signal.SIGHUP)
            elif event == "ttou":
                os.kill(proc.pid, signal.SIGTTIN)
                time.sleep(0.25)
                os.kill(proc.pid, signal.SIGTTOU)
        return stream.stop()
    finally:
        proc.stop(10)


def measure_all(seconds: float, events: tuple[str, ...] = EVENTS) -> dict[str, Any]:
    """Every event × (shared, reuseport) in this namespace: {"migrate_req", "runs": {"event listener": counts}}."""
    runs = {f"{event} {'reuseport' if rp else 'shared'}": measure(event, rp, seconds)
            for event in events for rp in (False, True)}
    return {"migrate_req": migrate_req(), "runs": runs}


# -- a network namespace of our own (root): the other tcp_migrate_req without touching the host's -------------
def can_unshare() -> str:
    """"" when measure_in_namespace can run here, else why not."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "a network namespace of our own needs root (CAP_SYS_ADMIN)"
    if migrate_req() < 0:
        return "this kernel has no net.ipv4.tcp_migrate_req (Linux >= 5.14)"
    return ""


def enter_namespace(migrate: int) -> None:
    """In this (child) process: a new network namespace, its loopback up, tcp_migrate_req = MIGRATE."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # SIOCGIFFLAGS, then SIOCSIFFLAGS | IFF_UP
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
    MIGRATE_REQ.write_text(str(migrate))


def measure_in_namespace(migrate: int, seconds: float, events: tuple[str, ...] = EVENTS,
                         timeout: float = 300) -> dict[str, Any]:
    """measure_all in a child process inside a network namespace of its own with tcp_migrate_req = MIGRATE."""
    code = (f"import json, sys; from {__name__} import enter_namespace, measure_all; enter_namespace({migrate}); "
            f"print(json.dumps(measure_all({seconds}, {tuple(events)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         env=launch.clean_env())
    if out.returncode != 0:
        raise RuntimeError(f"the measurement in a network namespace failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the bench scenario --------------------------------------------------------------------------------------------
def run(bench: Bench) -> dict[str, Any]:
    """Lost established connections per event and listener, here and (as root) with the other migrate setting."""
    if (skip := native_only(bench, "--reuseport")):
        return skip
    seconds = bench.plan.pick(2.0, 8.0)
    here = migrate_req()
    per_variant = len(EVENTS) * 2 * (seconds + 1.5)
    bench.progress.step(f"reuseport window · tcp_migrate_req={here}", per_variant)
    variants = {str(here): measure_all(seconds)}
    if not (why := can_unshare()):
        other = 0 if here == 1 else 1
        bench.progress.step(f"reuseport window · tcp_migrate_req={other} (own network namespace)", per_variant)
        variants[str(other)] = measure_in_namespace(other, seconds)
    summary = {m: {label: r["lost"] for label, r in v["runs"].items()} for m, v in variants.items()}
    return {"raw": {"variants": variants, "seconds": seconds, "namespace": why or "measured"}, "summary": summary}


def cells(sc: dict[str, Any], results: dict[str, Any], models: list[str]) -> Cells:
    parts = []
    for m, lost in sorted(sc["summary"].items()):
        worst = max(v for k, v in lost.items() if k.endswith("reuseport"))
        parts.append(f"migrate={m}: {worst} lost (reuseport, worst event)")
    return {"prefork": "; ".join(parts)}, "established connections lost across recycles, HUPs and TTOUs"


def section(d: Doc, c: Charts, sc: dict[str, Any], results: dict[str, Any]) -> None:
    raw = sc["raw"]
    d.p(f"{CLIENTS} clients open fresh connections {PAUSE_S * 1000:.0f} ms apart against `prefork --workers 2` for "
        f"{raw['seconds']:g} s per event. *Lost* = connected, never answered.")
    rows = []
    for m, v in sorted(raw["variants"].items()):
        for label, r in v["runs"].items():
            event, listener = label.split()
            rows.append([m, event, listener, r["answered"], r["lost"], r["refused"]])
    d.table(["tcp_migrate_req", "event", "listener", "answered", "lost", "refused"], rows)
    if raw["namespace"] != "measured":
        d.note(f"Only this namespace's setting was measured: {raw['namespace']}.")
    d.note("The master keeps each worker's SO_REUSEPORT listener open, so a worker that recycles, is replaced by "
           "SIGHUP, crashes or hangs leaves its queue to its successor: nothing is reset. Only a worker fewer "
           "(SIGTTOU) closes a listener; it drains its queue and closes it itself, so what is left is the "
           "microseconds between its last empty accept and its close — and with tcp_migrate_req=1 the kernel "
           "hands even that to a sibling.")


SCENARIO = Scenario(
    name="reuseport", row="reuseport window", title="Reuseport window: lost connections while workers come and go",
    why="a closing SO_REUSEPORT listener resets its queue unless migrated; the master keeps listeners open",
    # quick: 2 s per event and listener, 6 runs (twice as root: a namespace of its own with the other setting)
    run=run, section=section, cells=cells, quick_s=30, full_s=100)
