"""`GET /metrics`: the server's figures in Prometheus's text format, and how separate processes report one sum.

# What is exported, and where each figure comes from
The request figures are the one thing this module counts itself, once per finished request, in
prometheus_client's own types (the format is never written by hand):
  http_server_request_duration_seconds{http_request_method, http_route, http_response_status_code}
      a histogram, named as OpenTelemetry's HTTP semantic conventions render in Prometheus. The route is the
      route *template* (here the path of a known route, since no route has parameters); any other path is
      `other`, so a scanner cannot blow up the label set. Unknown methods are `_OTHER`. Requests the codec
      refused (400/408/413/431) are observed with method `_OTHER`, route `other` and a duration of 0: they
      never reached a handler and nobody timed them.
  webmodels_faults_injected_total{kind}
      counted when a fault route is entered, before it does its damage.
Everything else already exists in `/_lab/stats` and is read from there at scrape time by a custom
collector (no second bookkeeping): http_server_active_requests (`counters.in_flight`), webmodels_workers,
webmodels_busy_threads, webmodels_loop_lag_seconds, webmodels_worker_restarts_total{reason} (a master's
worker exits by cause; the native supervisor's restarts for the single-process models),
webmodels_memory_bytes{kind=rss|uss|pss} (summed over the process tree), webmodels_processes,
webmodels_threads, webmodels_start_time_seconds, webmodels_info{model,engine,pid}. A figure that does not
apply to a model is exported as 0, so every model has every series (the event loop has no busy threads;
only the event loop has a loop lag).

`/metrics` itself is never counted in what it reports (app.py routes it around the accounting), and each
scrape says what the previous one cost this process: webmodels_metrics_scrape_duration_seconds.

# What a scrape costs (the event loop pays it on its one thread; the budget is 1 ms)
Counting a request: a dict lookup, a bisect and two list increments under a lock (0.45 µs of CPU here,
against 0.87 µs for prometheus_client's Histogram; prefork's, in a shared file, ~2 µs). A scrape reads the process tree's memory on a helper
thread (smaps_rollup: the kernel walks the page tables for 0.3-0.7 ms, GIL released) while the handler
waits as an effect, then renders on the answering thread: rt.counters() and prometheus_client's text
format, ~6 µs per sample line with prometheus_client 0.21 (0.22+ escapes every label name of every
sample and nearly doubles that: hence the pin in pyproject.toml). Fewer buckets above 10 ms than
OpenTelemetry's default for the same reason. Measured (CPU time of the loop thread, reported by each
scrape as webmodels_metrics_scrape_duration_seconds): see README "Metrics".

# Prefork: one scrape of the master's port = the sum over every worker, dead ones included
Any worker may answer a scrape, and each worker counts its own requests in its own memory. Two ways to
add them up were on the table:
  - the shared-memory board (servers/prefork.py): fixed-size slots of integers, folded into `retired_*`
    totals by the master when it reaps a worker. Perfect for a few counters; a histogram with open label
    sets (method × route × status × 15 buckets) does not fit fixed slots without inventing a second
    format.
  - **prometheus_client's multiprocess mode (chosen)**: every process writes its samples to its own
    mmap'ed file `<type>_<pid>.db` in one directory, and a scrape merges the files (MultiProcessCollector).
    It is the ecosystem's documented answer (gunicorn + prometheus_client), keeps the histogram a real
    prometheus_client Histogram, and teaches the lesson: workers share nothing but a directory of files
    in shared memory.
Its documented limits, and what we do about them:
  - The directory must be set before the first metric is created, in every process: the worker creates
    its metrics lazily, after fork, in a directory named after its master (pid + start time), under
    /dev/shm (tmpfs: never a disk, as DESIGN.md asks of heartbeats).
  - Files of dead processes stay and keep being summed — which is what makes counters survive a worker's
    death — but they pile up: a chaos run that kills a worker every 2 s for 15 min leaves 450 files, and
    every scrape would read them all. So a dead worker's files are **folded** into one `<type>_retired.db`
    and deleted (the raw values of each key added up, as MultiProcessCollector.merge(accumulate=False)
    is documented for writing back). Folding and scraping take the same exclusive `flock`, so a scrape
    sees a dead worker either in its own file or in the archive, never twice and never not at all:
    counters never go backwards. (Admitted limit: a process SIGKILLed in the microseconds between writing
    the archive and deleting the file would leave that worker counted twice — the master folds, when it
    does, and a master's death ends the server anyway.)
  - Gauges need a multiprocess mode; we keep none in files (the gauges come from the board through
    `/_lab/stats`), and `mark_process_dead` is still called for a dead pid in case one is added.
  - No per-process collectors (process_*): memory and the rest come from `/_lab/stats`, summed over the tree.
The master's part is three lines in servers/prefork.py (`from webmodels import metrics` first):
    Master.__init__, after the runtime is made, before any fork:
        self.metrics_store = metrics.MultiprocessStore.create(self.runtime)  # /dev/shm dir, empty
    Master.reap_workers, for each reaped worker pid:
        self.metrics_store.retire(pid)                                       # fold it now, off the request path
    Master.run, before it returns:
        self.metrics_store.close()                                           # remove the directory
Without them it still works: a worker attaches to the same directory on its own, and the worker that
answers a scrape folds the files of workers that are gone (dead, not on the board); a stale directory of
a dead master is swept at the next start.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import shutil
import tempfile
import threading
import time
from bisect import bisect_left
from typing import Any, Generator, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client import values as _values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.utils import floatToGoString

from . import stats
from .codec import Response
from .effects import Sleep
from .log import log
from .runtime import Runtime

PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text format, version 0.0.4
DURATION = "http_server_request_duration_seconds"
DURATION_HELP = "Duration of HTTP server requests"
LABELS = ["http_request_method", "http_route", "http_response_status_code"]
# OpenTelemetry's advice starts at 5 ms; a hello answer here takes tens of µs, so finer buckets below, and
# fewer above: every bucket is one more line per series to render on the thread that answers the scrape.
BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
PROC_POLL = 0.0002  # how often a scrape looks whether the helper thread has read /proc
OTHER_ROUTE = "other"
OTHER_METHOD = "_OTHER"
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
FAULT_KINDS = {"/fault/crash": "crash", "/fault/segfault": "segfault", "/fault/hang": "hang",
               "/fault/leak": "leak", "/fault/raise": "raise", "/_lab/kill": "kill"}
ENGINES = {"threadpool": "threads", "eventloop": "loop", "prefork": "sync", "hybrid-threads": "threads",
           "hybrid-loop": "loop"}
SHM = "/dev/shm"
DIR_PREFIX = "webmodels-metrics-"

disable_created_metrics()  # no *_created series: they double the output and nothing here reads them


# -- the multiprocess store ---------------------------------------------------------------------------------------
def _pid_of(filename: str) -> int | None:
    """The pid in `<type>[_<mode>]_<pid>.db`; None for the archive (`<type>_retired.db`) and other files."""
    if not filename.endswith(".db"):
        return None
    tail = filename[:-3].rpartition("_")[2]
    return int(tail) if tail.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True  # a zombie too: not reaped yet, its slot still on the board; folded next time


class MultiprocessStore:
    """One directory of prometheus_client multiprocess files for a master and its workers."""

    def __init__(self, path: str) -> None:
        self.path = path

    @staticmethod
    def base_dir() -> str:
        return SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK) else tempfile.gettempdir()

    @classmethod
    def path_for(cls, master_pid: int, started_at: float, base: str | None = None) -> str:
        # pid *and* start time: a new master that happens to get an old pid never inherits old counts
        return os.path.join(base or cls.base_dir(), f"{DIR_PREFIX}{master_pid}-{int(started_at * 1000)}")

    @classmethod
    def create(cls, rt: Runtime, base: str | None = None) -> MultiprocessStore:
        """In the master, before the first fork: an empty directory, and the workers will use it."""
        global _store
        path = cls.path_for(rt.server_pid(), rt.started_at, base)
        sweep_stale(os.path.dirname(path))
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
        _store = cls(path)
        return _store

    @classmethod
    def attach(cls, rt: Runtime, base: str | None = None) -> MultiprocessStore:
        """In a worker whose master made no store: the same directory every sibling will find."""
        path = cls.path_for(rt.server_pid(), rt.started_at, base)
        if not os.path.isdir(path):
            sweep_stale(os.path.dirname(path))
            os.makedirs(path, exist_ok=True)
        return cls(path)

    def activate(self) -> None:
        """Make prometheus_client write this process's samples to the directory (before creating metrics)."""
        global _activated
        if _activated == (self.path, os.getpid()):
            return  # a second value class would open a second writer on the same file
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.path  # read by its MmapedValue when it opens a file
        _values.ValueClass = _values.MultiProcessValue()
        _activated = (self.path, os.getpid())

    def _locked(self, how: int = fcntl.LOCK_EX) -> _Flock:
        return _Flock(os.path.join(self.path, ".lock"), how)

    def pids(self) -> set[int]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return set()
        return {pid for pid in map(_pid_of, names) if pid is not None}

    def _fold(self, pid: int) -> None:
        """Add a dead process's counters and histogram buckets to `<type>_retired.db`; delete its files.

        The caller holds the lock. Gauges of a dead process mean nothing: their files are deleted.
        """
        mark_process_dead(pid, self.path)
        suffix = f"_{pid}.db"
        for name in sorted(os.listdir(self.path)):
            if not name.endswith(suffix) or _pid_of(name) != pid:
                continue
            src = os.path.join(self.path, name)
            typ = name.split("_", 1)[0]
            if typ != "gauge":
                archive = MmapedDict(os.path.join(self.path, f"{typ}_retired.db"))
                try:
                    for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(src):
                        old, _ = archive.read_value(key)
                        archive.write_value(key, old + value, 0.0)
                finally:
                    archive.close()
            os.remove(src)

    def retire(self, pid: int) -> None:
        """The master reaped PID: fold its files now (off every request path)."""
        try:
            with self._locked():
                self._fold(pid)
        except FileNotFoundError:
            pass  # the directory is gone: the server is stopping

    def retire_gone(self, live: Iterable[int]) -> list[int]:
        """Fold every process that is neither in LIVE nor still a process; return their pids. Lock held."""
        keep = set(live) | {os.getpid()}
        gone = [pid for pid in self.pids() if pid not in keep and not _alive(pid)]
        for pid in gone:
            self._fold(pid)
        return gone

    def collect(self, live: Iterable[int] = ()) -> list[Metric]:
        """Merge every file (the live workers' and the archive) into metric families: one consistent sum."""
        with self._locked():
            self.retire_gone(live)
            files = [os.path.join(self.path, n) for n in os.listdir(self.path) if n.endswith(".db")]
            return list(MultiProcessCollector.merge(files, accumulate=True))

    def close(self) -> None:
        """At the master's exit: remove the directory."""
        shutil.rmtree(self.path, ignore_errors=True)


class _Flock:
    def __init__(self, path: str, how: int) -> None:
        self.path, self.how, self.fd = path, how, -1

    def __enter__(self) -> _Flock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, self.how)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing releases the lock (and so does dying)


def sweep_stale(base: str) -> None:
    """Remove metrics directories whose master is no longer running (left by a SIGKILLed server)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if name.startswith(DIR_PREFIX):
            pid = name[len(DIR_PREFIX):].partition("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)


_activated: tuple[str, int] | None = None
_store: MultiprocessStore | None = None  # set in a master by MultiprocessStore.create; inherited by fork


# -- collectors ---------------------------------------------------------------------------------------------------
class StoreCollector:
    """The multiprocess files of every worker of this server, merged at scrape time."""

    def __init__(self, store: MultiprocessStore, rt: Runtime) -> None:
        self.store, self.rt = store, rt

    def collect(self) -> Iterator[Metric]:
        yield from self.store.collect(self.rt.worker_pids())


def read_tree(roles: dict[int, str]) -> dict[str, Any]:
    """`/_lab/stats`'s process figures (stats.process_info per process) and their totals, as snapshot sums them.

    Runs on the metrics helper thread: reading /proc/PID/smaps_rollup makes the kernel walk the page tables
    (0.3-0.7 ms for one process here), time during which that thread holds no GIL and the loop serves on.
    """
    procs = [info for pid, role in sorted(roles.items()) if (info := stats.process_info(pid, role)) is not None]
    totals = {k: sum(p[k] for p in procs) for k in ("rss", "uss", "pss", "threads")}
    totals["processes"] = len(procs)
    return totals


class RuntimeCollector:
    """What `/_lab/stats` already knows (runtime.counters(), the process tree), as metric families."""

    def __init__(self, rt: Runtime, metrics: Metrics) -> None:
        self.rt, self.metrics = rt, metrics

    def collect(self) -> Iterator[Metric]:
        # The same sources as stats.snapshot: the counters read here, on the thread that owns them; the
        # process tree read beforehand on the helper thread (Metrics.scrape) — or here, without one.
        rt = self.rt
        totals = self.metrics.tree if self.metrics.tree is not None else read_tree(rt.process_roles())
        snap = {"counters": rt.counters(), "model": rt.model, "pid": rt.server_pid(),
                "started_at": rt.started_at, "restarts": _env_restarts()}
        c = snap["counters"]
        model = str(snap.get("model", self.rt.model))

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("http_server_active_requests", "Requests being handled right now (all workers)",
                    c.get("in_flight", 0))
        workers = c.get("workers", 1)
        yield gauge("webmodels_workers", "Worker processes alive (1 for a single-process model)", workers)
        busy = c.get("busy_threads")
        if busy is None:  # a sync worker is one thread; the one answering this scrape is not busy with a request
            busy = max(0, c.get("busy_workers", 0) - (1 if _is_worker_of_master(self.rt) else 0))
        yield gauge("webmodels_busy_threads", "Threads (or sync workers) running a handler; 0 on an event loop",
                    busy)
        yield gauge("webmodels_loop_lag_seconds", "How late the event loop's timer woke (max over workers); "
                    "0 without a loop", (c.get("loop_lag_ms") or 0.0) / 1000)
        restarts = CounterMetricFamily("webmodels_worker_restarts", "Worker exits by cause (a master respawns "
                                       "them); single-process models: restarts by the native supervisor",
                                       labels=["reason"])
        exits = c.get("worker_exits")
        if isinstance(exits, dict):
            for reason, n in sorted(exits.items()):
                restarts.add_metric([reason], n)
        else:
            restarts.add_metric(["supervisor"], snap.get("restarts") or 0)
        yield restarts
        mem = GaugeMetricFamily("webmodels_memory_bytes", "Memory summed over the server's process tree "
                                "(RSS counts shared pages once per process; PSS splits them)", labels=["kind"])
        for kind in ("rss", "uss", "pss"):
            mem.add_metric([kind], totals.get(kind, 0))
        yield mem
        yield gauge("webmodels_processes", "Processes in the server's tree", totals.get("processes", 0))
        yield gauge("webmodels_threads", "Threads summed over the server's process tree", totals.get("threads", 0))
        yield gauge("webmodels_start_time_seconds", "When this server (its master) started, Unix time",
                    snap.get("started_at", self.rt.started_at))
        info = GaugeMetricFamily("webmodels_info", "The model, its engine and the server's pid",
                                 labels=["model", "engine", "pid"])
        engine = getattr(rt.config, "engine", None) or ENGINES.get(model, "")  # --engine, once servers have it
        info.add_metric([model, str(engine), str(snap.get("pid", ""))], 1)
        yield info
        yield gauge("webmodels_metrics_scrape_duration_seconds", "Time this process spent on its previous "
                    "/metrics answer", self.metrics.last_scrape_s)


class RequestHistogram:
    """The request-duration histogram of a single-process server: plain lists, rendered by prometheus_client.

    Why not prometheus_client's Histogram here: it costs ~0.9 µs per observation and ~40 µs per series to
    collect (a lock per bucket), and the event loop pays both on its one thread. Plain lists under the
    Metrics lock cost ~0.45 µs and ~15 µs; the text is still prometheus_client's (HistogramMetricFamily),
    identical to what its Histogram renders (a test compares them). The prefork workers keep its Histogram:
    its values are what the multiprocess files hold.
    """

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, str], list] = {}  # grown with setdefault: one list per labels
        self._les = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]

    def series(self, labels: tuple[str, str, str]) -> list:
        """The counts of LABELS: one per bucket (not cumulative; +Inf last), then the sum of durations."""
        s = self._series.get(labels)
        if s is None:
            s = self._series.setdefault(labels, [0] * (len(BUCKETS) + 1) + [0.0])
        return s

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(DURATION, DURATION_HELP, labels=LABELS)
        for labels, counts in list(self._series.items()):
            counts = counts[:]  # one copy: a request finishing meanwhile on another thread is in it or not
            total, buckets = 0, []
            for le, n in zip(self._les, counts):
                total += n
                buckets.append((le, total))
            fam.add_metric(list(labels), buckets, counts[-1])
        yield fam


# -- the per-process metrics object ---------------------------------------------------------------------------------
class Metrics:
    """The request histogram and fault counter of this process, and the registry a scrape renders."""

    def __init__(self, rt: Runtime, store: MultiprocessStore | None = None) -> None:
        from .app import FAULT_ROUTES, ROUTES  # here, not at import: app imports this module

        self.rt = rt
        self.store = store
        self.routes = frozenset(ROUTES) | (frozenset(FAULT_ROUTES) if rt.config.faults else frozenset())
        if store is not None:
            store.activate()
        self.faults = Counter("webmodels_faults_injected", "Fault routes entered, by kind", ["kind"],
                              registry=None)
        self._children: dict[tuple[str, str, int], Any] = {}  # raw (method, path, status) → series or child
        self._lock = threading.Lock()  # the pool's threads observe concurrently
        self.last_scrape_s = 0.0
        self.tree: dict[str, Any] | None = None  # the process tree's figures for the scrape in progress
        self._helper: concurrent.futures.ThreadPoolExecutor | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        if store is not None:
            # shared files: prometheus_client's own Histogram, whose values live in this process's file
            self.duration = Histogram(DURATION, DURATION_HELP, LABELS, buckets=BUCKETS, registry=None)
            self.observe = self._observe_child  # type: ignore[method-assign]
            self.registry.register(StoreCollector(store, rt))
        else:
            self.hist = RequestHistogram()
            self.registry.register(self.hist)
            self.registry.register(self.faults)
        self.registry.register(RuntimeCollector(rt, self))

    def labels(self, method: str, path: str | None, status: int) -> tuple[str, str, str]:
        """The label values of a request: known methods, route templates (never a raw path), the status."""
        return (method if method in METHODS else OTHER_METHOD, path if path in self.routes else OTHER_ROUTE,
                str(status))

    def observe(self, method: str, path: str | None, status: int, seconds: float) -> None:
        key = (method, path, status)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = self.hist.series(self.labels(method, path, status))
            if len(self._children) > 4096:  # raw paths as keys: a scanner must not grow this forever
                self._children.clear()
        i = bisect_left(BUCKETS, seconds)  # the first bucket whose bound is >= seconds, as prometheus_client
        with self._lock:
            series[i] += 1
            series[-1] += seconds

    def _observe_child(self, method: str, path: str | None, status: int, seconds: float) -> None:
        key = (method, path, status)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children[key] = self.duration.labels(*self.labels(method, path, status))
                if len(self._children) > 4096:
                    self._children.clear()
        child.observe(seconds)

    def fault(self, path: str) -> None:
        self.faults.labels(FAULT_KINDS.get(path, path.rpartition("/")[2])).inc()

    def render(self) -> bytes:
        """The exposition text, everything read on the calling thread (tests, tools)."""
        t0 = time.perf_counter()
        body = generate_latest(self.registry)
        self.last_scrape_s = time.perf_counter() - t0
        return body

    def scrape(self) -> Generator[Sleep, None, bytes]:
        """The /metrics handler's work: /proc read on a helper thread while we wait, then render here.

        The wait is an effect, so the event loop serves other connections meanwhile; the sync models block
        their thread as for any I/O. `last_scrape_s` is the CPU time of the calling thread (thread_time:
        neither the waits nor time the OS gave to other processes count): what a scrape costs whoever
        answers it.
        """
        t0 = time.thread_time()
        if self._helper is None:
            self._helper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metrics-proc")
        job = self._helper.submit(read_tree, self.rt.process_roles())
        spent = time.thread_time() - t0
        while not job.done():
            yield Sleep(PROC_POLL)
        t0 = time.thread_time()
        self.tree = job.result()
        try:
            body = generate_latest(self.registry)
        finally:
            self.tree = None
        self.last_scrape_s = spent + time.thread_time() - t0
        return body


def _env_restarts() -> int | None:
    raw = os.environ.get("WEBMODELS_RESTARTS", "")  # as stats.snapshot reads it: set by `webmodels up`
    return int(raw) if raw.isdigit() else None


def _is_worker_of_master(rt: Runtime) -> bool:
    try:
        return rt.server_pid() != os.getpid()
    except Exception:  # noqa: BLE001 - a runtime without a board yet
        return False


_create_lock = threading.Lock()  # two pool threads finishing their first requests together make one Metrics


def of(rt: Runtime) -> Metrics:
    """This runtime's Metrics, created on first use in the process that serves (after any fork)."""
    m = rt.metrics
    if m is None:
        with _create_lock:
            m = rt.metrics
            if m is None:
                store = _store
                if store is None and _is_worker_of_master(rt):
                    store = MultiprocessStore.attach(rt)
                m = rt.metrics = Metrics(rt, store)
    return m


# -- what app.py calls ------------------------------------------------------------------------------------------------
def observe(rt: Runtime, method: str, path: str | None, status: int, seconds: float) -> None:
    """Count one finished request (called where app.py accounts it)."""
    m = rt.metrics
    (m if m is not None else of(rt)).observe(method, path, status, seconds)


def fault(rt: Runtime, path: str) -> None:
    """Count a fault route entered, before it strikes (a crashing worker's count survives in its file)."""
    try:
        of(rt).fault(path)
    except Exception:  # noqa: BLE001 - counting must never stop the fault
        log.exception("metrics: counting fault %s failed", path)


def response(rt: Runtime) -> Generator[Sleep, None, Response]:
    """The /metrics answer (a handler generator: it waits for the helper thread's /proc reading)."""
    try:
        body = yield from of(rt).scrape()
        return Response(200, body, CONTENT_TYPE)
    except Exception:  # noqa: BLE001 - a broken scrape is a logged 500, never a dead server
        log.exception("metrics: rendering /metrics failed")
        return Response(500, b"metrics unavailable\n")
