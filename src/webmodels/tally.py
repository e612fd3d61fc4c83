"""The request tally behind `/metrics`: every answer's labels and duration, in memory that processes can share.

# What is counted, and where
Every request the server counts in `/_lab/stats` is tallied here exactly once: the handler's answers by
app.py (method, path, status, duration), and what the connection policy answers itself — a refusal of the
codec (400/413/431), a 408, an abandoned half-sent request, the 503 at admission — by the runtime, which
is the policy's one place to count (`Runtime.request_finished(status, started=False)`): method `_OTHER`,
route `other`, duration 0 (nobody timed it). Fault routes entered are tallied too (before they strike).

# The layout: regions of 8-byte words
A *region* is what one process counts into, and only that process writes it (the threads of a threads
engine share a per-process lock, the runtime's):
    word 0          rows in use
    word 1          pid of the process that counts here now
    words 2..17     one counter per fault route (in the order app.py registered them)
    then ROWS rows  [key, one count per bucket (not cumulative; +Inf last), sum of durations (a double)]
A row's key packs (method, route, status) as small integers (METHOD_LABELS, the registered routes, the
status itself), so any process can read any region: the vocabulary is the same in every process of a
server (workers are forked from one master, after app.py registered its routes).

A single-process model has one region in its own memory. A prefork master maps one region per board slot,
an anonymous MAP_SHARED mmap made before the first fork (never a file: servers/board.py's rule), and each
worker counts into the region of its board slot. A scrape, answered by any worker, reads every region
and adds them up; nobody takes a lock across processes. The mapping starts with one page of flags, one
word per region that says it has been written: a scrape reads only those, so the pages of slots no worker
ever had are never touched (they cost no memory).

# Why counters never go backwards, and nothing is counted twice: the region belongs to the slot
A worker that dies leaves its counts where they are, and they stay in every sum. The worker that takes
its slot next (the master reuses a slot only after reaping its worker: one live process per slot) goes on
counting in the same rows. So there is no fold to race a scrape, no retired total to keep in step, and
no lock: each word only grows, is written by one process at a time, and is read whole (aligned 8-byte
words). A row is published by writing its key before the "rows in use" word, so a reader never sees a
row without its key. What a reader can see: a request's bucket counted and its duration not yet added
to the sum — one request, for the one instant it is being counted.

# The limit: ROWS label sets per slot
The label sets are bounded (10 methods × the routes × the statuses this server answers), but a region
holds at most ROWS - 1 of them; every later one is counted in one overflow row labelled
method `_OTHER`, route `other`, status `_OTHER`. A region fills only if one slot's workers see more than
ROWS - 1 distinct (method, route, status) triples — a fuzzer could, a workshop does not (a lab run has a
few dozen).
"""

from __future__ import annotations

import mmap
import os
import threading
from bisect import bisect_left
from typing import Iterable

# OpenTelemetry's advice starts at 5 ms; a hello answer here takes tens of µs, so finer buckets below, and
# fewer above: every bucket is one more line per series to render on the thread that answers the scrape.
BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
NB = len(BUCKETS) + 1  # counts per row, +Inf last
OTHER_METHOD = "_OTHER"
OTHER_ROUTE = "other"
OTHER_STATUS = "_OTHER"  # the overflow row's status label
METHOD_LABELS = (OTHER_METHOD, "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
METHODS = frozenset(METHOD_LABELS[1:])
_METHOD_INDEX = {m: i for i, m in enumerate(METHOD_LABELS)}

MAX_FAULTS = 16
HEADER = 2 + MAX_FAULTS  # words before the first row
ROW = 1 + NB + 1  # key, counts, sum
ROWS = 512
REGION = HEADER + ROWS * ROW  # words per region (~70 KiB; pages are touched only as rows are used)
PAGE_WORDS = mmap.PAGESIZE // 8
OVERFLOW_KEY = 1 << 48  # method 0, route 0, status 0: the row every label set past ROWS - 1 shares

# The routes app.py registers: index 0 is `other`; fault routes count as routes only where faults are on.
_routes: tuple[str, ...] = (OTHER_ROUTE,)
_plain: dict[str, int] = {}
_faults: dict[str, int] = {}  # fault route → its index among the fault routes (its fault counter)


def register_routes(plain: Iterable[str], faults: Iterable[str]) -> None:
    """Name the route templates (label values; any other path is `other`): app.py calls this at import."""
    global _routes, _plain, _faults
    plain, faults = list(plain), list(faults)
    if len(faults) > MAX_FAULTS:
        raise ValueError(f"at most {MAX_FAULTS} fault routes fit a region's header, got {len(faults)}")
    _routes = (OTHER_ROUTE, *plain, *faults)
    _plain = {r: i for i, r in enumerate(_routes) if r in plain}
    _faults = {r: i for i, r in enumerate(faults)}


def key_of(method: str, path: str | None, status: int, faults: bool) -> int:
    """The row key of a request: known methods, registered routes (never a raw path), the status."""
    route = _plain.get(path)  # type: ignore[arg-type]
    if route is None:
        route = 1 + len(_plain) + _faults[path] if faults and path in _faults else 0  # type: ignore[index]
    return 1 << 48 | _METHOD_INDEX.get(method, 0) << 32 | route << 16 | (status & 0xFFFF)


def labels_of(key: int) -> tuple[str, str, str]:
    """(method, route, status) label values of a row key."""
    status = key & 0xFFFF
    return (METHOD_LABELS[key >> 32 & 0xFFFF], _routes[key >> 16 & 0xFFFF], str(status) if status else OTHER_STATUS)


def fault_routes() -> tuple[str, ...]:
    """The registered fault routes, in the order of a region's fault counters."""
    return tuple(_faults)


class Regions:
    """Regions of 8-byte words in one buffer: a process's own memory, or a shared mapping made before fork."""

    def __init__(self, count: int, shared: bool) -> None:
        self.start = -(-count // PAGE_WORDS) * PAGE_WORDS  # the flags (word i: region i was written), a page
        size = (self.start + count * REGION) * 8
        if shared:  # the same pages in every process forked after this; nothing on any disk
            self.buf: mmap.mmap | bytearray = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        else:
            self.buf = bytearray(size)
        self.count, self.shared, self.mapped_by = count, shared, os.getpid()
        self.q = memoryview(self.buf).cast("q")
        self.d = memoryview(self.buf).cast("d")

    def tally(self, index: int, faults: bool, lock: threading.Lock | None = None) -> Tally:
        """The writer of region INDEX for this process (counts already there are kept and added to)."""
        if self.shared and os.getpid() == self.mapped_by:
            raise RuntimeError("a shared tally is written by processes forked after it was mapped, not by its maker")
        return Tally(self, index, faults, lock)

    def read(self) -> tuple[dict[int, list], list[int]]:
        """Every region added up: {row key: [counts..., sum]} in order of first appearance, fault counters."""
        q, d = self.q, self.d
        rows: dict[int, list] = {}
        faults = [0] * MAX_FAULTS
        for index in range(self.count):
            if not q[index]:
                continue  # a slot no worker has had
            base = self.start + index * REGION
            used = q[base]
            for i in range(MAX_FAULTS):
                faults[i] += q[base + 2 + i]
            for w in range(base + HEADER, base + HEADER + min(used, ROWS) * ROW, ROW):
                counts = q[w + 1:w + 1 + NB].tolist()
                counts.append(d[w + 1 + NB])
                acc = rows.get(q[w])
                if acc is None:
                    rows[q[w]] = counts
                else:
                    for i, n in enumerate(counts):
                        acc[i] += n
        return rows, faults


class Tally:
    """One process's counts in one region: the request histogram's rows and the fault counters."""

    def __init__(self, regions: Regions, index: int, faults: bool, lock: threading.Lock | None) -> None:
        if not 0 <= index < regions.count:
            raise IndexError(f"region {index} of {regions.count}")
        self.regions, self.faults_on, self.lock = regions, faults, lock
        self.q, self.d = regions.q, regions.d
        self.base = regions.start + index * REGION
        self.q[self.base + 1] = os.getpid()
        self.q[index] = 1  # "written": scrapes read this region from now on
        # row key → word index of its first count; rebuilt from what a previous owner of the region left
        self._keys = {self.q[w]: w + 1 for w in self._row_words()}
        self._cache: dict[tuple[str, str | None, int], int] = {}  # raw (method, path, status) → first count

    def _row_words(self) -> range:
        start = self.base + HEADER
        return range(start, start + min(self.q[self.base], ROWS) * ROW, ROW)

    def observe(self, method: str, path: str | None, status: int, seconds: float) -> None:
        """Count one answered request that took SECONDS."""
        row = self._cache.get((method, path, status))
        if row is None:
            row = self._row(method, path, status)
        i = row + bisect_left(BUCKETS, seconds)  # the first bucket whose bound is >= seconds, as prometheus_client
        lock = self.lock
        if lock is None:
            self.q[i] += 1
            self.d[row + NB] += seconds
        else:
            with lock:
                self.q[i] += 1
                self.d[row + NB] += seconds

    def refused(self, status: int) -> None:
        """Count an answer the policy gave itself: no method, no route, nobody timed it."""
        self.observe(OTHER_METHOD, None, status, 0.0)

    def fault(self, path: str) -> None:
        """Count fault route PATH entered (before it strikes: the count outlives a crashing process)."""
        w = self.base + 2 + _faults[path]
        if self.lock is None:
            self.q[w] += 1
        else:
            with self.lock:
                self.q[w] += 1

    def _row(self, method: str, path: str | None, status: int) -> int:
        key = key_of(method, path, status, self.faults_on)
        if self.lock is None:
            return self._claim(key, (method, path, status))
        with self.lock:
            return self._claim(key, (method, path, status))

    def _claim(self, key: int, raw: tuple[str, str | None, int]) -> int:
        row = self._keys.get(key)
        if row is None:
            q, used = self.q, self.q[self.base]
            if used < ROWS - 1:
                w = self.base + HEADER + used * ROW
            else:  # full: the overflow row, the region's last
                key = OVERFLOW_KEY
                row = self._keys.get(key)
                w = self.base + HEADER + (ROWS - 1) * ROW
            if row is None:
                q[w] = key  # the key first, then "rows in use": a reader never sees a row without its key
                q[self.base] = (w - self.base - HEADER) // ROW + 1
                row = self._keys[key] = w + 1
        if len(self._cache) > 4096:  # raw paths as keys: a scanner must not grow this forever
            self._cache.clear()
        self._cache[raw] = row
        return row
