"""The bench's machinery: servers pinned to cores, a restart-on-exit supervisor, a stats sampler, progress.

Pinning: on a machine with at least two cores the servers get the first core and Locust the others
(`taskset`), so a server never competes with its load generator for CPU; the multi-core scenario lets the
server use every core instead (it is the one that asks "does it scale with cores?"). Every process the bench
starts runs in its own process group and is stopped through that group, never by name.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

import httpx
import psutil

from .. import launch
from ..stats import process_info

STATS_TIMEOUT = 1.0  # a stalled event loop must not stall the sampler


@dataclass(frozen=True)
class Pinning:
    """Which cores the servers and the load generator may use."""

    server: tuple[int, ...]
    locust: tuple[int, ...]
    all: tuple[int, ...]

    @classmethod
    def detect(cls) -> "Pinning":
        cpus = tuple(sorted(os.sched_getaffinity(0)))
        if len(cpus) >= 2 and shutil.which("taskset"):
            return cls(server=cpus[:1], locust=cpus[1:], all=cpus)
        return cls(server=cpus, locust=cpus, all=cpus)  # one core: nothing to separate; the report says so

    def describe(self) -> str:
        if self.server == self.all:
            return f"no pinning possible (cores {_cpulist(self.all)}): servers and Locust share them"
        return (f"servers on core {_cpulist(self.server)}, Locust on core {_cpulist(self.locust)} "
                f"(multi-core scenario: server on cores {_cpulist(self.all)})")


def _cpulist(cpus: tuple[int, ...]) -> str:
    return ",".join(map(str, cpus))


def taskset(cpus: tuple[int, ...], argv: list[str]) -> list[str]:
    if shutil.which("taskset") and tuple(sorted(os.sched_getaffinity(0))) != tuple(cpus):
        return ["taskset", "-c", _cpulist(cpus), *argv]
    return argv


class BenchServer:
    """One `webmodels serve` subprocess on loopback, optionally restarted when it dies.

    Ports: the first start binds port 0 and the bound port is read from the server's start-up line
    (listen.LISTEN_RE), so no port is picked, released and hoped for. A restart must come back on the same
    port (clients keep their URL); if that port is still held ("address in use", e.g. by a dying
    process group), the start is retried until a deadline instead of failing.

    The restart stands in for Docker's `restart:` policy (the lab's supervisor does the same with back-off);
    here it restarts at once, so the measured downtime is the model's own: process start + import + bind.
    """

    RETRY_S = 0.05

    def __init__(self, model: str, flags: list[str] | None = None, *, cpus: tuple[int, ...],
                 restart: bool = False, port: int = 0) -> None:
        self.model = model
        self.flags = list(flags or [])
        self.cpus = cpus
        self.restart = restart
        self.port = port
        self.proc: launch.Process | None = None  # the current server process (a new one after each restart)
        self.deaths: list[dict[str, Any]] = []  # when and how the server process died, and when it was back
        self.bind_retries = 0
        self._stopping = False
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def lines(self) -> list[str]:
        """The current server process's output (the latest launch.MAX_LINES lines)."""
        return self.proc.lines if self.proc is not None else []

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> "BenchServer":
        if not self._start_until_bound(timeout):
            self.stop()
            raise RuntimeError(f"{self.model} did not start:\n" + "\n".join(self.lines[-20:]))
        if self.restart:
            self._watch = threading.Thread(target=self._supervise, name=f"supervise-{self.model}", daemon=True)
            self._watch.start()
        return self

    def _start_until_bound(self, timeout: float) -> bool:
        """Spawn until the server says it listens; retry while its port is in use, up to TIMEOUT."""
        deadline = time.monotonic() + timeout
        while True:
            argv = launch.serve_argv(self.model, *self.flags, bind=f"127.0.0.1:{self.port}")
            proc = self.proc = launch.Process(taskset(self.cpus, argv), env=launch.clean_env())
            if proc.wait_listening(max(0.0, deadline - time.monotonic())):
                self.port = self.port or proc.port
                return True
            if time.monotonic() > deadline or not self._port_in_use(proc):
                return False
            self.bind_retries += 1
            time.sleep(self.RETRY_S)

    @staticmethod
    def _port_in_use(proc: launch.Process) -> bool:
        """True if PROC, whose output ended without a start-up line, exits within a second saying its port is taken."""
        try:
            proc.wait(1)
        except subprocess.TimeoutExpired:
            return False
        return launch.addr_in_use("\n".join(proc.lines[-5:]))

    def _supervise(self) -> None:
        while not self._stopping:
            proc = self.proc
            assert proc is not None
            status = proc.poll()
            if status is None:
                time.sleep(0.005)
                continue
            died = time.time()
            with self._lock:
                if self._stopping:
                    return
                proc.signal_group(signal.SIGKILL)  # leftovers of the dead server's group (none expected)
                back_ok = self._start_until_bound(20)
            back = time.time() if back_ok else None
            self.deaths.append({"died_at": died, "status": status, "back_at": back,
                                "restart_ms": round((back - died) * 1000, 1) if back else None})

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self) -> None:
        """Fast stop (SIGINT to the whole group: no drain, the bench is done with it), then SIGKILL the group."""
        self._stopping = True
        with self._lock:
            proc = self.proc
        if proc is not None:  # every engine leaves on SIGINT in milliseconds; one that has not after 1.5 s is
            # blocked (an event loop stuck in a hung handler sees no signal): waiting longer only slows the bench
            proc.stop(1.5, signal.SIGINT, group=True)

    def __enter__(self) -> "BenchServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RemoteServer:
    """A server we did not start (compose ports): we can load and observe it, not reconfigure or signal it."""

    restart = False

    def __init__(self, model: str, url: str) -> None:
        self.model, self.url = model, url
        self.deaths: list[dict[str, Any]] = []

    def start(self) -> "RemoteServer":
        get_stats(self.url)  # fail early and clearly if it is not there
        return self

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return get_stats(self.url) is not None

    def __enter__(self) -> "RemoteServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        pass


def get_stats(url: str, timeout: float = STATS_TIMEOUT) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{url}/_lab/stats", timeout=timeout)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def compact(stats: dict[str, Any]) -> dict[str, Any]:
    """The part of a /_lab/stats document the bench keeps for every sample.

    `root` is the process whose death is the server's (the master of a master model): its file descriptors,
    threads, RSS and children — the figures a long run must not see grow.
    """
    procs = stats.get("processes", [])
    root = next((p for p in procs if p["pid"] == stats.get("pid")), None)
    return {"pid": stats.get("pid"), "totals": stats.get("totals", {}), "counters": stats.get("counters", {}),
            "pids": [p["pid"] for p in procs], "threads": [p["threads"] for p in procs],
            "root": root and {"fds": root["open_fds"], "threads": root["threads"], "rss": root["rss"],
                              "children": stats.get("children", sum(1 for p in procs if p["ppid"] == root["pid"]))}}


def local_stats(pid: int) -> dict[str, Any] | None:
    """A /_lab/stats-shaped document for a process of ours (the bench itself), measured as a server measures its own."""
    info = process_info(pid, "local")
    if info is None:
        return None
    try:
        children = len(psutil.Process(pid).children())  # the bench supervises: a child it never reaped stays
    except psutil.Error:
        return None
    return {"pid": pid, "processes": [info], "children": children, "counters": {},
            "totals": {"rss": info["rss"], "uss": info["uss"], "pss": info["pss"], "threads": info["threads"],
                       "processes": 1}}


class StatsSampler:
    """Poll /_lab/stats of several servers in the background; a server that does not answer is recorded down.

    LOCAL names processes of ours (name → pid) sampled the same way without HTTP (local_stats).
    """

    def __init__(self, servers: dict[str, str], interval: float = 0.25, local: dict[str, int] | None = None) -> None:
        self.servers = servers
        self.interval = interval
        sources: dict[str, str | int] = {**servers, **(local or {})}
        self.samples: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(name, source), daemon=True)
                         for name, source in sources.items()]
        self.t0 = time.time()

    def _loop(self, name: str, source: str | int) -> None:
        """Sample SOURCE (a server's URL, or a pid of ours) every interval until stopped."""
        with httpx.Client(timeout=STATS_TIMEOUT) as client:  # one connection per server, kept
            while not self._stop.is_set():
                t = time.time()
                doc = local_stats(source) if isinstance(source, int) else self._get(client, source)
                sample = {"t": round(t - self.t0, 3), "ms": round((time.time() - t) * 1000, 2), "up": doc is not None}
                if doc:
                    sample.update(compact(doc))
                self.samples[name].append(sample)
                self._stop.wait(max(0.0, self.interval - (time.time() - t)))

    @staticmethod
    def _get(client: httpx.Client, url: str) -> dict[str, Any] | None:
        try:
            r = client.get(f"{url}/_lab/stats")
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def __enter__(self) -> "StatsSampler":
        self.t0 = time.time()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(STATS_TIMEOUT + 1)


class Progress:
    """One updating line on stderr: bar, percent, the step and how far it is, time left (estimated from the plan).

    A step names what it runs and may name a DETAIL (a callable: what the step has done so far, e.g. a Locust
    run's requests and faults injected), shown with the step's elapsed seconds. Not on a terminal (CI, a log
    file) the line is printed once per step and again every PLAIN_EVERY_S while a step lasts: a long step
    shows that it moves.
    """

    PLAIN_EVERY_S = 10.0

    def __init__(self, total_s: float, enabled: bool | None = None, stream: Any = None) -> None:
        self.total = max(total_s, 1.0)
        self.done = 0.0  # planned seconds of finished steps
        self.step_s = 0.0
        self.step_t0 = time.monotonic()
        self.label = ""
        self.detail: Callable[[], str] | None = None
        self.t0 = time.monotonic()
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._plain_at = -1.0  # when the last plain line was printed (monotonic); -1: not for this step

    def start(self) -> "Progress":
        self._thread.start()
        return self

    def step(self, label: str, planned_s: float, detail: Callable[[], str] | None = None) -> None:
        """Begin a step expected to take PLANNED_S seconds; DETAIL() says what it has done so far."""
        self.done += self.step_s
        self.step_s, self.step_t0, self.label, self.detail = planned_s, time.monotonic(), label, detail
        self._plain_at = -1.0
        self._draw()

    def _fraction(self) -> float:
        in_step = min(time.monotonic() - self.step_t0, self.step_s)
        return min((self.done + in_step) / self.total, 1.0)

    def line(self) -> str:
        """The progress line as it reads now."""
        now = time.monotonic()
        frac = self._fraction()
        elapsed = now - self.t0
        left = max(self.total - (self.done + min(now - self.step_t0, self.step_s)), 0)
        # scale the planned remainder by how far the plan has been off so far
        if frac > 0.05:
            left = max(elapsed / frac - elapsed, 0)
        where = f"{_mmss(now - self.step_t0)} of ~{_mmss(self.step_s)}"
        try:
            done = self.detail() if self.detail else ""
        except Exception:  # noqa: BLE001 - a progress detail must never break the run it describes
            done = ""
        bar = "#" * int(frac * 30)
        return (f"[{bar:<30}] {frac * 100:3.0f}%  {self.label} · {where}" + (f" · {done}" if done else "")
                + f"  ~{_mmss(left)} left")

    def _draw(self) -> None:
        if not self.label:
            return  # no step yet
        if self.enabled:
            self.stream.write("\r\x1b[2K" + self.line()[:160])
            self.stream.flush()
            return
        now = time.monotonic()
        if self._plain_at < 0 or now - self._plain_at >= self.PLAIN_EVERY_S:
            self._plain_at = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._draw()

    def close(self, message: str = "") -> None:
        self._stop.set()
        if self.enabled:
            self.stream.write("\r\x1b[2K")
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()


def _mmss(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


PACKAGES = ("webmodels", "locust", "psutil", "uvloop", "httptools", "httpx", "matplotlib", "gevent")


def machine_facts() -> dict[str, Any]:
    """What a reader needs to judge the numbers: cores, CPU, Python, package versions, load, commit."""
    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        versions["wrk"] = (out.stdout + out.stderr).split("\n")[0].split(" Copyright")[0].strip()
    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__), timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "cores_online": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)), "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "python_impl": platform.python_implementation(), "versions": versions,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "commit": commit,
    }


def dumps(obj: Any) -> str:
    """results.json: compact (no indentation) — `python -m json.tool` pretty-prints it for reading."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=False, default=str)
