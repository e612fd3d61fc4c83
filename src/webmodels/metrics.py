"""`GET /metrics`: the server's figures in Prometheus's text format, and how separate processes report one sum.

# What is exported, and where each figure comes from
The request figures are the one thing counted for this endpoint alone, in the tally (tally.py), once per
answer — the handler's and the connection policy's own (refusals, 408, the 503 at admission) — and
rendered here by prometheus_client's metric families (the format is never written by hand):
  http_server_request_duration_seconds{http_request_method, http_route, http_response_status_code}
      a histogram, named as OpenTelemetry's HTTP semantic conventions render in Prometheus. The route is the
      route *template* (here the path of a known route, since no route has parameters); any other path is
      `other`, so a scanner cannot blow up the label set. Unknown methods are `_OTHER`. What the policy
      answered itself (400/408/413/431, 503 at admission) has method `_OTHER`, route `other` and a
      duration of 0: it never reached a handler and nobody timed it. So the histogram's total count is
      `/_lab/stats`'s counters.requests, always.
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

# Prefork: one scrape of the master's port = the sum over every worker, dead ones included
Workers share nothing but pages of shared memory: the board (servers/board.py) for `/_lab/stats`, and the
tally's regions for this histogram — one region per board slot, mapped by the master before the first fork.
Each worker counts into its own region with no lock across processes; whichever worker answers a scrape
adds up every region while the others go on counting. A dead worker's counts stay in its region, and the
worker that takes its slot next counts on from there, so the sum never goes backwards and never counts
anyone twice (tally.py says why no fold and no lock are needed). prometheus_client's multiprocess mode
(one mmap'ed file per process, merged per scrape) was the first answer here: it nearly doubled what a loop
worker's handler path costs per request, and left a file per dead worker to fold away (benchmarks/README.md).

# What a scrape costs (the event loop pays it on its one thread; the budget is 1 ms)
Counting a request: a dict lookup, a bisect and two word increments — the same in a private or a shared
region (5.0k instructions under callgrind, against 5.9k for the former lists under a lock and 18.6k for
prometheus_client's multiprocess file; a few tenths of a µs). A scrape reads the process tree's memory on
a helper thread (smaps_rollup: the kernel walks the page tables for 0.3-0.7 ms, GIL released) while the
handler waits as an effect, then renders on the answering thread: the tally's rows and rt.counters() into
prometheus_client's text format, ~6 µs per sample line with prometheus_client 0.21 (0.22+ escapes every
label name of every sample and nearly doubles that: hence the pin in pyproject.toml). Fewer buckets above
10 ms than OpenTelemetry's default for the same reason. Measured (CPU time of the loop thread, reported by each
scrape as webmodels_metrics_scrape_duration_seconds): see README "Metrics".
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from typing import Any, Generator, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from . import faults, stats, tally
from .codec import Response
from .effects import Sleep
from .log import log
from .runtime import Runtime

PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text format, version 0.0.4
DURATION = "http_server_request_duration_seconds"
DURATION_HELP = "Duration of HTTP server requests"
LABELS = ["http_request_method", "http_route", "http_response_status_code"]
PROC_POLL = 0.0002  # how often a scrape looks whether the helper thread has read /proc
_LES = [floatToGoString(b) for b in tally.BUCKETS] + ["+Inf"]


# -- collectors ---------------------------------------------------------------------------------------------------
def families(regions: tally.Regions) -> Iterator[Metric]:
    """The request histogram and the fault counter: every region of REGIONS added up, as metric families.

    Rendered exactly as prometheus_client's own Histogram and Counter render them (a test compares).
    """
    rows, entered = regions.read()
    fam = HistogramMetricFamily(DURATION, DURATION_HELP, labels=LABELS)
    for key, counts in rows.items():
        total, buckets = 0, []
        for le, n in zip(_LES, counts):
            total += n
            buckets.append((le, total))
        fam.add_metric(list(tally.labels_of(key)), buckets, counts[-1])
    yield fam
    kinds: dict[str, int] = {}
    for path, n in zip(tally.fault_routes(), entered):
        if n:
            kind = faults.route_kind(path)  # the one fault table's names
            kinds[kind] = kinds.get(kind, 0) + n
    fam = CounterMetricFamily("webmodels_faults_injected", "Fault routes entered, by kind", labels=["kind"])
    for kind, n in kinds.items():
        fam.add_metric([kind], n)
    yield fam


class TallyCollector:
    """The tally of this server (every worker's, for prefork) at scrape time."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        return families(self.rt.tally.regions)  # read now: a prefork worker's tally is set after fork


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
        model = str(snap.get("model", rt.model))

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
        info.add_metric([model, rt.engine, str(snap.get("pid", ""))], 1)
        yield info
        yield gauge("webmodels_metrics_scrape_duration_seconds", "Time this process spent on its previous "
                    "/metrics answer", self.metrics.last_scrape_s)


# -- the per-process metrics object ---------------------------------------------------------------------------------
class Metrics:
    """The registry a scrape renders in this process: the tally (every worker's) and the runtime's figures."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.last_scrape_s = 0.0
        self.tree: dict[str, Any] | None = None  # the process tree's figures for the scrape in progress
        self._helper: concurrent.futures.ThreadPoolExecutor | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TallyCollector(rt))
        self.registry.register(RuntimeCollector(rt, self))

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


_create_lock = threading.Lock()  # two pool threads scraping at once make one Metrics


def of(rt: Runtime) -> Metrics:
    """This runtime's Metrics, created at the first scrape in the process that serves (after any fork)."""
    m = rt.metrics
    if m is None:
        with _create_lock:
            m = rt.metrics
            if m is None:
                m = rt.metrics = Metrics(rt)
    return m


# -- what app.py calls ------------------------------------------------------------------------------------------------
def fault(rt: Runtime, path: str) -> None:
    """Count a fault route entered, before it strikes (a crashing worker's count stays in its region)."""
    try:
        rt.tally.fault(path)
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
