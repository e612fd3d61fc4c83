"""The exercises' own actions, beside the lab's controls (webmodels.actions), in the same style.

kill, fault and scale are webmodels.actions' (the same code path as `webmodels kill/scale` and curl on a
fault route); what only an exercise needs lives here: the counter race (exercise 5), a series of leaks and
recycling the fattest worker (3), slow clients with a normal client beside them (7), a burst of fresh
connections to see who accepts (H3), and the reset that brings the lab back to its starting state between
exercises. Each returns an actions.Outcome (ok, a message for people, facts) that confirms what it did, and
each is recorded in the lab's event log (webmodels.events) like every fault, so the Servers tab's charts
mark it. `run` maps an exercise's Action (webmodels.exercises) to its call.

Threads and blocking sockets throughout: the Exercises tab calls this inside Locust, where gevent has patched
both (they run as greenlets there); the tests and the CLI call it as plain threads.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from . import actions, events
from .actions import Lab, Outcome, request
from .exercises import Action
from .figures import MIB, users_in_flight
from .lab import SERVERS
from .slowclients import SlowClients

BY = "exercises tab"
RESET_WAIT_S = 30.0  # a server restarting after a few crashes waits out its supervisor's back-off
STUCK_CHECK_S = 1.0  # with no load, a request still in flight this much later is hung
SLOW_SECONDS = 60.0  # slow clients stop by themselves after this (the Stop button or a reset stops them sooner)
SLOW_HEAD_START_S = 2.0


def _note(lab: Lab, server: str, kind: str, by: str, **facts: Any) -> None:
    """Record an exercise action in the lab's event log (not a fault: a marker on the charts)."""
    events.record(server, kind, via="tab", by=by, to=lab.events_path(), **facts)


def _addr(lab: Lab, server: str) -> tuple[str, int]:
    u = urlsplit(lab.url(server))
    return u.hostname or "127.0.0.1", u.port or 80


def _parallel(n: int, workers: int, job: Callable[[int], Any]) -> list[Any]:
    """Run JOB(i) for i in range(N) on WORKERS threads at once; the results in order."""
    results: list[Any] = [None] * n
    lock, next_i = threading.Lock(), [0]

    def worker() -> None:
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= n:
                return
            results[i] = job(i)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(n, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- exercise 5: the counter race ---------------------------------------------------------------------------------
def _read_counter(lab: Lab, server: str, mode: str) -> tuple[int, int] | None:
    reply = request(lab.url(server), "GET", f"/counter?mode={mode}&op=read", 5.0)
    doc = reply.json() if reply.kind == "answered" and reply.status == 200 else {}
    return (int(doc["pid"]), int(doc["value"])) if "value" in doc else None


def _read_every_worker(lab: Lab, server: str, mode: str, pids: set[int], tries: int = 64) -> dict[int, int]:
    """{pid: value} from fresh connections until every worker in PIDS answered (idle workers take turns)."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        got = _read_counter(lab, server, mode)
        if got:
            seen[got[0]] = got[1]
        if pids <= set(seen):
            break
    return seen


def counter_race(lab: Lab, server: str, mode: str = "unsafe", n: int = 200, parallel: int = 20,
                 window_ms: int = 20, by: str = BY) -> Outcome:
    """N increments of SERVER's counter, PARALLEL at once, each with a WINDOW_MS gap between read and write."""
    out = lambda ok, msg, **facts: Outcome(ok, msg, "counter", server, lab.where,  # noqa: E731
                                           {"mode": mode, "sent": n, **facts})
    st = actions.stats(lab, server)
    if st is None:
        return out(False, f"{server}: not answering (/_lab/stats)")
    workers = {w["pid"] for w in st.get("per_worker") or []}
    master = SERVERS[server].master
    if master:
        before = _read_every_worker(lab, server, mode, workers)
    elif request(lab.url(server), "GET", f"/counter?mode={mode}&op=reset", 5.0).status != 200:
        return out(False, f"{server}: could not reset its counter")
    _note(lab, server, "counter", by, mode=mode, n=n)
    path = f"/counter?mode={mode}&window_ms={window_ms}"
    replies = _parallel(n, parallel, lambda _i: request(lab.url(server), "GET", path, 10.0))
    answered = sum(1 for r in replies if r.kind == "answered" and r.status == 200)
    if master:
        after = _read_every_worker(lab, server, mode, workers)
        per_pid = {pid: after[pid] - before.get(pid, 0) for pid in after if pid in before}
        if set(per_pid) != workers:
            return out(False, f"{server}: the reads did not reach every worker ({len(per_pid)} of {len(workers)})",
                       answered=answered, per_pid=per_pid)
        return out(True, f"{server}: {answered} of {n} increments answered; the workers' counters moved by "
                         + " + ".join(map(str, per_pid.values())) + f" = {sum(per_pid.values())}",
                   answered=answered, per_pid={str(k): v for k, v in per_pid.items()})
    read = _read_counter(lab, server, mode)
    if read is None:
        return out(False, f"{server}: could not read its counter", answered=answered)
    return out(True, f"{server}: {answered} of {n} {mode} increments answered; the counter says {read[1]}",
               answered=answered, value=read[1], pid=read[0])


# -- exercise 4: CPU bursts ----------------------------------------------------------------------------------------
def cpu_burst(lab: Lab, server: str, n: int = 40, parallel: int = 8, ms: int = 50, by: str = BY) -> Outcome:
    """N requests of MS ms of CPU each, PARALLEL at once; the CPU cores SERVER used meanwhile, and the machine's.

    The cores: CPU seconds of the server's process tree (its /_lab/stats) over the burst's wall time. The
    machine's other load is measured beside it (psutil, all CPUs): with autogroup scheduling each server
    gets a fair share as a whole, so a busy machine leaves prefork's workers nothing to run in parallel on.
    """
    import psutil

    out = lambda ok, msg, **facts: Outcome(ok, msg, "cpu", server, lab.where, {"n": n, "ms": ms, **facts})  # noqa: E731
    before = actions.stats(lab, server)
    if before is None:
        return out(False, f"{server}: not answering (/_lab/stats)")
    _note(lab, server, "cpu-burst", by, n=n, ms=ms)
    machine0, t0 = psutil.cpu_times(), time.monotonic()
    replies = _parallel(n, parallel, lambda _i: request(lab.url(server), "GET", f"/cpu?ms={ms}", 60.0))
    wall, machine1 = time.monotonic() - t0, psutil.cpu_times()
    after = actions.stats(lab, server)
    if after is None or after.get("started_at") != before.get("started_at"):
        return out(False, f"{server}: restarted or silent during the burst")
    cpu = after["totals"]["cpu_seconds"] - before["totals"]["cpu_seconds"]
    busy = (sum(machine1) - machine1.idle - getattr(machine1, "iowait", 0)) - \
           (sum(machine0) - machine0.idle - getattr(machine0, "iowait", 0))
    answered = sum(1 for r in replies if r.kind == "answered" and r.status == 200)
    cores = cpu / wall
    others = max(0.0, busy / wall - cores)
    return out(answered == n, f"{server}: {answered} of {n} answered in {wall:.1f} s; {cpu:.1f} s of CPU = "
                              f"{cores:.2f} cores (the rest of the machine used {others:.1f} of "
                              f"{psutil.cpu_count()})", answered=answered, wall_s=round(wall, 3), cpu_s=round(cpu, 3),
               cores=round(cores, 3), others_cores=round(others, 2), machine_cores=psutil.cpu_count())


# -- exercise G: green threads -----------------------------------------------------------------------------------
def waits_together(lab: Lab, server: str, n: int = 20, ms: int = 500, by: str = BY) -> Outcome:
    """N requests that each wait MS ms (`/io`: blocking code, a plain time.sleep in the handler), all at once: how
    long they took together — MS if they overlap, N × MS if the server waits one at a time."""
    out = lambda ok, msg, **facts: Outcome(ok, msg, "together", server, lab.where, {"n": n, "ms": ms, **facts})  # noqa: E731
    _note(lab, server, "waits-together", by, n=n, ms=ms)
    t0 = time.monotonic()
    replies = _parallel(n, n, lambda _i: request(lab.url(server), "GET", f"/io?ms={ms}", 60.0))
    wall = time.monotonic() - t0
    answered = sum(1 for r in replies if r.kind == "answered" and r.status == 200)
    return out(answered == n, f"{server}: {answered} of {n} waits of {ms} ms answered in {wall:.2f} s together "
                              f"({n * ms / 1000 / wall:.1f} waiting at once)", answered=answered,
               wall_s=round(wall, 3), overlap=round(n * ms / 1000 / wall, 2))


def blocked_in_c(lab: Lab, server: str, ms: int = 2000, by: str = BY) -> Outcome:
    """One request that blocks its OS thread inside C for MS ms (`/io-in-c`, where no monkey-patch reaches); a
    second later, `GET /`: how long did it wait? A pool's other threads answer; a hub or a loop waits with it."""
    out = lambda ok, msg, **facts: Outcome(ok, msg, "cblock", server, lab.where, {"ms": ms, **facts})  # noqa: E731
    if actions.stats(lab, server) is None:
        return out(False, f"{server}: not answering (/_lab/stats)")
    _note(lab, server, "blocked-in-c", by, ms=ms)
    blocker = threading.Thread(target=request, args=(lab.url(server), "GET", f"/io-in-c?ms={ms}", ms / 1000 + 30),
                               daemon=True)
    blocker.start()
    time.sleep(0.3)  # the blocking request is in (on a busy machine too: it is one connect and one small send)
    t0 = time.monotonic()
    probe = request(lab.url(server), "GET", "/", ms / 1000 + 30)
    waited = time.monotonic() - t0
    blocker.join(ms / 1000 + 30)
    if probe.kind != "answered" or probe.status != 200:
        return out(False, f"{server}: `/` was not answered ({probe.error or probe.kind})")
    return out(True, f"{server}: `/` answered after {waited * 1000:.0f} ms while one request slept {ms} ms in C",
               waited_ms=round(waited * 1000, 1))


# -- exercise 3: leaks and recycling ------------------------------------------------------------------------------
def leak_series(lab: Lab, server: str, mb: int = 10, n: int = 20, by: str = BY) -> Outcome:
    """N leaks of MB MiB into SERVER through its fault route (actions.fault: each one confirmed)."""
    pids: dict[str, int] = {}
    for i in range(n):
        o = actions.fault(server, "leak", lab=lab, by=by, mb=mb)
        if not o.ok:
            return Outcome(False, f"{server}: leak {i + 1} of {n} failed: {o.message}", "leak", server, lab.where,
                           {"leaked_mb": i * mb, "pids": pids})
        pid = str(o.facts.get("pid"))
        pids[pid] = pids.get(pid, 0) + mb
    where = ", ".join(f"{mb_} MiB in pid {pid}" for pid, mb_ in pids.items())
    return Outcome(True, f"{server}: leaked {n * mb} MiB ({where})", "leak", server, lab.where,
                   {"leaked_mb": n * mb, "pids": pids})


def recycle_fattest(lab: Lab, server: str, by: str = BY) -> Outcome:
    """Kill SERVER's worker with the largest RSS (what --max-requests does on a schedule); the master replaces it."""
    st = actions.stats(lab, server)
    workers = [p for p in (st or {}).get("processes", []) if p.get("role") == "worker"]
    if not st or len(workers) < 2:
        return Outcome(False, f"{server}: no workers to compare", "kill", server, lab.where)
    fat = max(workers, key=lambda p: p["rss"])
    path = lab.events_path()
    leaked = [e for e in (events.read_all(path) if path else []) if e.get("kind") == "leak" and e.get("pid") == fat["pid"]]
    mb = sum(int(m.group(1)) for e in leaked if (m := re.search(r"[?&]mb=(\d+)", e.get("path", ""))))
    grew = mb if leaked else (fat["rss"] - min(p["rss"] for p in workers)) / MIB  # no event log: vs the leanest
    o = actions.kill(server, "worker", fat["pid"], lab=lab, by=by)
    o.facts.update(rss_before_mb=round(st["totals"]["rss"] / MIB, 1), worker_grew_mb=round(grew, 1),
                   worker_rss_mb=round(fat["rss"] / MIB, 1))
    if o.ok:
        o.message += (f" — it held {fat['rss'] / MIB:.0f} MiB, {grew:.0f} of them leaked" if leaked else
                      f" — it held {fat['rss'] / MIB:.0f} MiB, {grew:.0f} more than the leanest worker")
    return o


# -- H3: who accepts -------------------------------------------------------------------------------------------
def fresh_connections(lab: Lab, server: str, n: int = 2000, clients: int = 16, by: str = BY) -> Outcome:
    """N fresh connections (GET /, Connection: close) from CLIENTS at once; how many each worker accepted."""
    out = lambda ok, msg, **facts: Outcome(ok, msg, "connect", server, lab.where, {"n": n, **facts})  # noqa: E731
    before = actions.stats(lab, server)
    if before is None:
        return out(False, f"{server}: not answering (/_lab/stats)")
    _note(lab, server, "connections", by, n=n, clients=clients)
    replies = _parallel(n, clients, lambda _i: request(lab.url(server), "GET", "/", 10.0))
    after = actions.stats(lab, server)
    if after is None:
        return out(False, f"{server}: not answering after the connections")
    old = {w["pid"]: w["accepted"] for w in before.get("per_worker") or []}
    accepted = {str(w["pid"]): w["accepted"] - old.get(w["pid"], 0) for w in after.get("per_worker") or []}
    ok = sum(1 for r in replies if r.kind == "answered" and r.status == 200)
    total = max(1, sum(accepted.values()))
    split = " / ".join(f"{v / total:.0%}" for v in accepted.values())
    reuseport = bool(after.get("config", {}).get("reuseport"))
    return out(ok == n, f"{server}: {ok} of {n} answered; accepted per worker {split} "
                        f"({'own sockets: --reuseport' if reuseport else 'one shared listener'})",
               answered=ok, accepted=accepted, reuseport=reuseport)


# -- exercise 7: slow clients -----------------------------------------------------------------------------------
class SlowRuns:
    """The slow-client attacks this process runs, one per server, each bounded by SLOW_SECONDS."""

    def __init__(self) -> None:
        self.runs: dict[str, SlowClients] = {}

    def start(self, lab: Lab, server: str, clients: int = 100, seconds: float = SLOW_SECONDS,
              by: str = BY) -> Outcome:
        old = self.runs.get(server)
        if old is not None and old.running:
            return Outcome(True, f"{server}: {clients} slow clients already running", "slow", server, lab.where,
                           old.summary())
        host, port = _addr(lab, server)
        _note(lab, server, "slow-clients", by, clients=clients)
        # a 2 s head start: every trickler is connected (pinning what it can) before the normal client asks
        self.runs[server] = SlowClients(host, port, clients, seconds=seconds, head_start=SLOW_HEAD_START_S).start()
        return Outcome(True, f"{server}: {clients} clients trickling a head at 1 byte/s; a normal client asks "
                             f"for / every 100 ms from in {SLOW_HEAD_START_S:g} s (stops by itself after "
                             f"{seconds:.0f} s)",
                       "slow", server, lab.where, self.runs[server].summary())

    def facts(self, server: str) -> dict[str, Any] | None:
        run = self.runs.get(server)
        return run.summary() if run is not None else None

    def stop_all(self, lab: Lab | None = None, by: str = BY) -> Outcome:
        running = [name for name, run in self.runs.items() if run.running]
        for run in self.runs.values():
            run.stopped.set()
        for run in self.runs.values():
            run.stop()
        if lab is not None:
            for name in running:
                _note(lab, name, "slow-clients-stop", by)
        return Outcome(True, f"stopped the slow clients on {', '.join(running)}" if running else
                       "no slow clients were running", "slow", ",".join(running), lab.where if lab else "",
                       {"stopped": running})


SLOW = SlowRuns()


# -- reset ------------------------------------------------------------------------------------------------------
def _answer(lab: Lab, server: str, wait: float) -> dict[str, Any] | None:
    """SERVER's /_lab/stats, waiting up to WAIT seconds for it to answer (a restart in progress)."""
    deadline = time.monotonic() + wait
    while True:
        st = actions.stats(lab, server, 1.5)
        if st is not None or time.monotonic() >= deadline:
            return st
        time.sleep(0.2)


def _stuck(lab: Lab, server: str, st: dict[str, Any]) -> set[int]:
    """Processes of SERVER with requests still in flight now and STUCK_CHECK_S later, with no load: hung."""
    def busy(stats: dict[str, Any] | None) -> set[int]:
        if not stats:
            return set()
        if SERVERS[server].master:
            return {w["pid"] for w in stats.get("per_worker") or [] if users_in_flight(stats, w["pid"]) > 0}
        return {int(stats["pid"])} if users_in_flight(stats) > 0 else set()
    first = busy(st)
    if not first:
        return set()
    time.sleep(STUCK_CHECK_S)
    return first & busy(actions.stats(lab, server, 1.5))


def reset(lab: Lab, since: float = 0.0, by: str = BY) -> Outcome:
    """Bring the lab back to its starting state: hung or leaking processes replaced, workers back to the lab's
    count, counters zeroed, slow clients stopped. SINCE: leaks recorded since then are replaced.

    Call it with no load running (the tab stops Locust's run first): a request still in flight a second
    later is then a hung one.
    """
    done: list[str] = []
    problems: list[str] = []
    if SLOW.runs:
        SLOW.stop_all(lab, by)
    path = lab.events_path()
    leaks = [e for e in (events.read_all(path) if path else []) if e.get("kind") == "leak" and e["t"] >= since]
    for server, s in SERVERS.items():
        st = _answer(lab, server, 2.0)
        if st is None:
            p = actions.probe(server, lab)
            if p.state == "hung":
                done.append(actions.kill(server, "process", lab=lab, by=by).message)
            st = _answer(lab, server, RESET_WAIT_S)
            if st is None:
                problems.append(f"{server}: {actions.probe(server, lab).state} after {RESET_WAIT_S:g} s")
                continue
        leaked = {int(e["pid"]) for e in leaks if e["server"] == server and e.get("pid")}
        if s.master:
            workers = {w["pid"] for w in st.get("per_worker") or []}
            for pid in sorted((_stuck(lab, server, st) | leaked) & workers):
                o = actions.kill(server, "worker", pid, lab=lab, by=by)
                (done if o.ok else problems).append(o.message)
            st = _answer(lab, server, 5.0) or st
            want = int(st.get("config", {}).get("workers", 0))
            have = int(st.get("counters", {}).get("target_workers") or len(st.get("per_worker") or []))
            if want and have != want:
                o = actions.scale(server, want - have, lab=lab, by=by)
                (done if o.ok else problems).append(o.message)
        elif _stuck(lab, server, st) or leaked:
            o = actions.kill(server, "process", lab=lab, by=by)
            (done if o.ok else problems).append(o.message)
            if _answer(lab, server, RESET_WAIT_S) is None:
                problems.append(f"{server}: not answering {RESET_WAIT_S:g} s after its restart")
                continue
        if not s.master:
            for mode in ("unsafe", "locked"):
                request(lab.url(server), "GET", f"/counter?mode={mode}&op=reset", 5.0)
    _note(lab, "lab", "reset", by, replaced=len(done))
    msg = "lab reset: " + ("; ".join(done) if done else "nothing to replace") + (
        " — could not: " + "; ".join(problems) if problems else "")
    return Outcome(not problems, msg, "reset", "lab", lab.where, {"done": done, "problems": problems})


# -- an exercise's action -----------------------------------------------------------------------------------------
def run(action: Action, lab: Lab, by: str = BY) -> Outcome:
    """Do ACTION (an exercise's button) through the lab's actions layer or the exercises' own actions."""
    p = dict(action.params)
    if action.verb == "kill":
        # pid "busiest": the worker holding the most requests at the kill (the kill event records that split)
        return actions.kill(action.server, p.get("target"), p.get("pid"), lab=lab, by=by)
    if action.verb == "fault":
        return actions.fault(action.server, p.pop("kind"), lab=lab, by=by, **p)
    if action.verb == "scale":
        return actions.scale(action.server, int(p["delta"]), lab=lab, by=by)
    if action.verb == "counter":
        return counter_race(lab, action.server, p.get("mode", "unsafe"), by=by)
    if action.verb == "cpu":
        return cpu_burst(lab, action.server, by=by)
    if action.verb == "leak":
        return leak_series(lab, action.server, int(p.get("mb", 10)), int(p.get("n", 20)), by=by)
    if action.verb == "fattest":
        return recycle_fattest(lab, action.server, by=by)
    if action.verb == "connect":
        return fresh_connections(lab, action.server, int(p.get("n", 2000)), int(p.get("clients", 16)), by=by)
    if action.verb == "together":
        return waits_together(lab, action.server, int(p.get("n", 20)), int(p.get("ms", 500)), by=by)
    if action.verb == "cblock":
        return blocked_in_c(lab, action.server, int(p.get("ms", 2000)), by=by)
    if action.verb == "slow":
        if p.get("stop"):
            return SLOW.stop_all(lab, by)
        return SLOW.start(lab, action.server, int(p.get("clients", 100)), by=by)
    raise ValueError(f"unknown action verb {action.verb!r}")

