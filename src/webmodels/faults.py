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
    """Block the calling thread without yielding to anyone (time.sleep, not the Sleep effect)."""
    time.sleep(seconds)


def leak(mb: int) -> int:
    """Allocate MB MiB, touch every page so it counts in RSS/USS, keep it; return the total leaked MiB."""
    block = bytearray(mb * MIB)  # calloc'd: zero pages are not resident until written
    block[::PAGE] = b"\x01" * len(range(0, len(block), PAGE))
    _leaked.append(block)
    return sum(len(b) for b in _leaked) // MIB
