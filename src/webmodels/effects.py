"""What the handler may wait for, and the two drivers that do the waiting.

The handler is a generator: where it must wait it *yields an effect* (`Sleep`, `Acquire`, `Release`)
instead of calling `time.sleep` or `await asyncio.sleep`. A synchronous model (thread pool, prefork)
executes the effect by blocking its thread; the event loop awaits it. So one handler runs unchanged under
every model, and the only difference left between them is how they wait.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, Generator, Union


@dataclass(frozen=True)
class Sleep:
    """Wait SECONDS without using the CPU (simulated I/O)."""
    seconds: float


@dataclass(frozen=True)
class Acquire:
    """Take the named process-wide lock (threading.Lock or asyncio.Lock, by model)."""
    name: str


@dataclass(frozen=True)
class Release:
    name: str


Effect = Union[Sleep, Acquire, Release]
Handler = Generator[Effect, Any, Any]

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()
_async_locks: dict[str, asyncio.Lock] = {}


def _thread_lock(name: str) -> threading.Lock:
    with _thread_locks_guard:
        lock = _thread_locks.get(name)
        if lock is None:
            lock = _thread_locks[name] = threading.Lock()
        return lock


def run_sync(gen: Handler) -> Any:
    """Drive GEN to completion, blocking the calling thread on each effect."""
    try:
        effect = next(gen)
        while True:
            if isinstance(effect, Sleep):
                time.sleep(effect.seconds)
            elif isinstance(effect, Acquire):
                _thread_lock(effect.name).acquire()
            elif isinstance(effect, Release):
                _thread_lock(effect.name).release()
            else:
                raise TypeError(f"unknown effect {effect!r}")
            effect = gen.send(None)
    except StopIteration as stop:
        return stop.value


async def run_async(gen: Handler) -> Any:
    """Drive GEN to completion on the running event loop, awaiting each effect."""
    try:
        effect = next(gen)
        while True:
            if isinstance(effect, Sleep):
                await asyncio.sleep(effect.seconds)
            elif isinstance(effect, Acquire):
                lock = _async_locks.get(effect.name)
                if lock is None:
                    lock = _async_locks[effect.name] = asyncio.Lock()
                await lock.acquire()
            elif isinstance(effect, Release):
                _async_locks[effect.name].release()
            else:
                raise TypeError(f"unknown effect {effect!r}")
            effect = gen.send(None)
    except StopIteration as stop:
        return stop.value
