"""Injected faults: each one does to the process that serves it exactly what its name says.

They are real, not simulated: a crash is `os._exit`, a segfault is a real SIGSEGV from reading address 0,
a hang blocks whatever runs the handler (a pool thread, a worker process, or the whole event loop), a leak
keeps touched memory forever. What the attendee sees afterwards is the model's doing, not ours.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import time

# The exit statuses live in exitcodes.py; these names stay importable from here for older callers.
from .exitcodes import (EXIT_BOOT, EXIT_CONFIG, EXIT_CRASH, EXIT_NAMES, EXIT_RECYCLED,
                        EXIT_TIMEOUT, EXIT_WATCHDOG)

__all__ = ["EXIT_BOOT", "EXIT_CONFIG", "EXIT_CRASH", "EXIT_NAMES", "EXIT_RECYCLED", "EXIT_TIMEOUT", "EXIT_WATCHDOG",
           "crash", "segfault", "hang", "leak"]
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
