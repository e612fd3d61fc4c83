"""The prefork master's duties, shown once with its default sync workers, against real `webmodels serve prefork`.

Respawn, death with the master, crashes, hangs, kills, signals (TERM, HUP, TTIN/TTOU), a worker that cannot
boot, scaling, memory per process, and /metrics across worker deaths. What changes with the engine of the
workers — the same duties per engine, the hybrids' own liveness rules, --reuseport — is test_master_engines.py.
Every figure comes from outside: `/_lab/stats` (answered by any worker from the shared-memory board), the
server's exit status and log (its own clock for timing claims), and psutil on the pids it reported.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from webmodels.exitcodes import EXIT_BOOT

from .support import Background, Conn, Server, gone, log_time_of, reply_until_close, wait_for
from .support.metrics import balanced, histogram
from .support.raw import request


def spawned_after(srv: Server, t: float) -> float:
    """The server's own clock at the first "spawned" line stamped at or after T (epoch seconds)."""
    def first() -> float | None:
        return min((s for s in (log_time_of(ln) for ln in srv.lines if " spawned (pid " in ln) if s >= t), default=None)
    return wait_for(first, timeout=5, what=f"a worker spawned after {t:.3f}")


# -- defaults -----------------------------------------------------------------------------------------------------
def test_four_workers_by_default_and_close_after_each_response(start_server) -> None:
    srv = start_server("prefork")
    assert len(srv.workers_become(4)) == 4
    with Conn(srv) as c:
        reply = c.call("/")
        assert reply.status == 200 and reply.closes
        assert c.closed() == b""  # --keepalive 0: a sync worker must not wait on an idle connection


# -- a worker dies: the master replaces it at once, and it dies with the master --------------------------------------
def test_prefork_replaces_a_killed_worker_within_half_a_second(start_server) -> None:
    # The master is woken by SIGCHLD: milliseconds. Asleep until its next tick it would take up to 1 s. Timed from
    # the kill to the replacement's "spawned" line, on the master's own clock: a test polling psutil on a busy
    # machine would time itself. Nine kills, judged by the median and the second slowest: a loaded machine may keep
    # the master off the CPU once (issue 18: 0.595 s), while a master that waits for its tick is slow half the time
    # (a uniform 0-1 s: 9 such kills pass both bounds about 2 times in 100).
    srv = start_server("prefork", "--workers", "2")
    times = []
    for _ in range(9):
        before = srv.workers_become(2)
        t0 = time.time()
        os.kill(min(before), signal.SIGKILL)
        times.append(spawned_after(srv, t0 - 0.001) - t0)  # (log stamps are whole milliseconds)
    print(f"prefork respawn after SIGKILL, by the master's log: {', '.join(f'{t * 1000:.0f}' for t in times)} ms")
    assert statistics.median(times) < 0.2, times
    assert sorted(times)[-2] < 0.5, times
    assert srv.get("/").status_code == 200


def test_prefork_workers_die_with_their_master(start_server) -> None:
    srv = start_server("prefork", "--workers", "2")
    workers = srv.workers_become(2)
    try:
        os.kill(srv.pid, signal.SIGKILL)  # no chance to clean up: only PR_SET_PDEATHSIG can take the workers
        assert srv.wait_exit(5) == -signal.SIGKILL
        wait_for(lambda: all(gone(pid) for pid in workers), timeout=3,
                 what=f"workers {sorted(workers)} gone after kill -9 of their master")
    finally:
        for pid in workers:  # if the claim broke, leave no orphan behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- crashes and hangs ------------------------------------------------------------------------------------------------
def test_crash_costs_only_its_own_request(start_server) -> None:
    srv = start_server("prefork")
    before = srv.workers_become(4)
    slow = [Background(srv, "/io?ms=1500") for _ in range(3)]  # one on each of three workers
    wait_for(lambda: srv.in_flight() >= 3, what="3 requests in flight")
    with pytest.raises(httpx.TransportError):  # the crashing worker takes its connection with it
        srv.get("/fault/crash")  # only one worker is free to take it
    wait_for(lambda: srv.counters()["respawns"] == 1, timeout=5, what="the respawn")
    assert [b.result() for b in slow] == [200, 200, 200], [b.error for b in slow]
    assert srv.alive()
    after = srv.workers_become(4)
    assert len(after) == 4 and len(before - after) == 1 and len(after - before) == 1
    c = srv.counters()
    assert c["worker_exits"]["crash"] == 1 and c["respawns"] == 1
    assert sum(c["worker_exits"].values()) == 1
    srv.said("injected crash")


def test_segfault_is_counted_as_a_signal(start_server) -> None:
    srv = start_server("prefork", "--workers", "2")
    before = srv.workers_become(2)
    with pytest.raises(httpx.TransportError):
        srv.get("/fault/segfault")
    wait_for(lambda: srv.counters()["worker_exits"]["signal"] == 1, timeout=10, what="exits.signal == 1")
    after = srv.workers_become(2)
    assert len(after - before) == 1
    c = srv.counters()
    assert c["worker_exits"]["crash"] == 0 and c["respawns"] == 1
    srv.said("SIGSEGV")
    assert srv.get("/").status_code == 200


def test_hung_worker_is_killed_and_replaced_within_timeout(start_server) -> None:
    srv = start_server("prefork", "--workers", "2", "--timeout", "2")
    before = srv.workers_become(2)
    hang = Background(srv, "/fault/hang?s=60", timeout=20)
    wait_for(lambda: srv.in_flight() >= 1, what="the hang in flight")
    assert srv.get("/").status_code == 200  # the other worker still answers meanwhile
    wait_for(lambda: srv.counters()["worker_exits"]["timeout"] == 1, timeout=10, what="exits.timeout == 1")
    after = srv.workers_become(2, timeout=5)
    # by the server's own clock: the worker's "hang" line to the replacement's "spawned"
    hung_at = srv.log_time("fault: /fault/hang")
    replaced_at = max(srv.log_time(f"spawned (pid {pid})") for pid in after - before)
    print(f"prefork: hung worker killed and replaced {replaced_at - hung_at:.3f}s after the hang by the server's "
          f"log (--timeout 2; target 2.25s)")
    assert 1.9 <= replaced_at - hung_at < 3.0
    assert len(after - before) == 1
    hang.result()
    assert hang.status is None and isinstance(hang.error, httpx.TransportError)
    assert srv.get("/").status_code == 200
    c = srv.counters()
    assert c["worker_exits"]["timeout"] == 1 and c["respawns"] == 1


# -- /_lab/kill ---------------------------------------------------------------------------------------------------------
def test_kill_a_worker_and_it_is_replaced(start_server) -> None:
    srv = start_server("prefork", "--workers", "2")
    before = srv.workers_become(2)
    with srv.client() as c:
        r = c.post("/_lab/kill?target=worker")
    assert r.status_code == 202
    victim = r.json()["pid"]
    assert victim in before
    after = srv.workers_become(2, exclude={victim})
    assert len(after - before) == 1
    wait_for(lambda: gone(victim), timeout=5, what=f"worker {victim} to be gone")
    c = srv.counters()
    assert c["worker_exits"]["signal"] == 1 and c["respawns"] == 1


def test_kill_a_given_worker_and_nothing_that_is_not_a_worker(start_server) -> None:
    srv = start_server("prefork", "--workers", "2")
    before = srv.workers_become(2)
    with srv.client() as c:
        for pid in (srv.pid, 1, "abc", 99999999):  # the master, init, not a pid, no such process
            r = c.post(f"/_lab/kill?target=worker&pid={pid}")
            assert r.status_code == 400 and r.json()["param"] == "pid", (pid, r.text)
        assert srv.worker_pids() == before and srv.alive()
        victim = min(before)
        r = c.post(f"/_lab/kill?target=worker&pid={victim}")
    assert r.status_code == 202 and r.json()["pid"] == victim
    srv.workers_become(2, exclude={victim})


def test_kill_process_takes_the_whole_server(start_server) -> None:
    srv = start_server("prefork", "--workers", "2")
    pids = srv.workers_become(2)
    r = reply_until_close(srv, "POST", "/_lab/kill?target=process")
    assert r.status == 202 and r.json()["pid"] == srv.pid
    assert "content-length" not in r.headers and r.closes, r.headers  # it ends at the answering worker's death
    assert srv.wait_exit(5) == -signal.SIGKILL
    wait_for(lambda: all(gone(p) for p in pids), timeout=5, what="every worker to be gone")
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.url + "/", timeout=2)


# -- signals to the master ------------------------------------------------------------------------------------------------
def test_prefork_log_does_not_say_drained_after_forcing(start_server) -> None:
    srv = start_server("prefork", "--workers", "2", "--graceful-timeout", "1")
    slow = Background(srv, "/io?ms=5000")
    wait_for(lambda: srv.in_flight() >= 1, what="the slow request in flight")
    srv.signal(signal.SIGTERM)
    slow.result()
    assert slow.status is None  # forced after 1 s
    srv.wait_exit(10)
    srv.said("forcing 1 in flight")
    srv.said("bye")
    master = [line for line in srv.lines if f"[{srv.pid}]" in line]  # (an idle worker drained: its own line)
    assert not [line for line in master if "drained" in line], srv.log


def test_sigterm_to_a_worker_still_booting_is_not_lost(start_server) -> None:
    # The window between fork() and the worker's own handlers, widened to 1 s: a TERM arriving then used
    # to hit the master's inherited do-nothing handler, and the stop waited for --graceful-timeout's kill.
    srv = start_server("prefork", "--workers", "2", "--graceful-timeout", "10",
                       env={"WEBMODELS_FAULT_BOOT_DELAY": "1.0"})
    wait_for(lambda: len(psutil.Process(srv.pid).children()) == 2, timeout=5, interval=0.01,
             what="two workers forked (still booting)")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit(15) == 0
    elapsed = time.monotonic() - t0
    srv.said("bye")
    assert "forcing" not in srv.log
    assert elapsed < 3.0, f"the stop waited {elapsed:.1f}s: a TERM to a booting worker was lost"


@pytest.mark.parametrize("flags", [(), ("--reuseport",)], ids=["shared", "reuseport"])
def test_a_request_queued_while_every_worker_boots_is_served_at_a_stop(start_server, flags: tuple[str, ...]) -> None:
    # The request waits in the listen queue (nobody accepts yet); the TERM waits for the workers' handlers; then
    # they drain the queue as at any stop — the request is answered, not reset by the master's close.
    srv = start_server("prefork", "--workers", "2", *flags, env={"WEBMODELS_FAULT_BOOT_DELAY": "1.0"})
    s = socket.create_connection((srv.host, srv.port), timeout=15)
    s.sendall(request("/"))
    srv.signal(signal.SIGTERM)
    with s:
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    assert srv.wait_exit(15) == 0


def test_ttin_ttou_change_the_worker_count(start_server) -> None:
    srv = start_server("prefork", "--workers", "2")
    srv.workers_become(2)
    # Two TTINs in quick succession: the second arrives before the first new worker is up. (Not two
    # back-to-back kill() calls: the kernel keeps one pending instance of a standard signal, so two sent
    # before the master runs are one delivery; we wait until the master has taken the first.)
    srv.signal(signal.SIGTTIN)
    srv.said("SIGTTIN: workers → 3")
    srv.signal(signal.SIGTTIN)
    srv.said("SIGTTIN: workers → 4")
    srv.workers_become(4)
    assert srv.counters()["target_workers"] == 4
    srv.signal(signal.SIGTTOU)
    srv.workers_become(3)
    c = srv.counters()
    assert c["target_workers"] == 3
    assert c["respawns"] == 0  # growing and shrinking on request is not a respawn


def test_a_retiring_worker_serves_the_connection_it_was_woken_for(start_server) -> None:
    # Idle sync workers wait in epoll with EPOLLEXCLUSIVE: the kernel wakes one of them per connection. A worker
    # told to stop in that instant must serve the connection it was woken for — no sibling was woken, so it would
    # wait for the next arrival (CI: a TTOU at the end of a stream left one until its client timed out). Made
    # certain here: the other worker is busy, the idle one is stopped inside its wait (SIGSTOP), the connection
    # arrives and wakes it (its waiter is still in line), then TERM and CONT.
    srv = start_server("prefork", "--workers", "2")
    workers = srv.workers_become(2)
    busy = Background(srv, "/io?ms=6000")

    def idle_one() -> int | None:
        st = srv.stats()  # (answered by the idle one: its own request is not a user's)
        per = {w["pid"]: w["in_flight"] - (w["pid"] == st["answered_by"]) for w in st["per_worker"]}
        return next((p for p, n in per.items() if n == 0), None) if sorted(per.values()) == [0, 1] else None

    idle = wait_for(idle_one, what="one worker busy with /io, the other idle")
    wchan = Path(f"/proc/{idle}/wchan")
    wait_for(lambda: "epoll" in wchan.read_text(), what=f"worker {idle} waiting in epoll")
    os.kill(idle, signal.SIGSTOP)
    try:
        s = socket.create_connection((srv.host, srv.port), timeout=10)
        s.sendall(request("/whoami", "Connection: close\r\n"))
        time.sleep(0.2)  # the handshake and the wake-up are the kernel's: done in microseconds
        os.kill(idle, signal.SIGTERM)
    finally:
        os.kill(idle, signal.SIGCONT)
    with s:
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply
    answered_by = int(reply.split(b'"pid":')[1].split(b",")[0].split(b"}")[0])
    assert answered_by == idle, (answered_by, idle, workers)  # not its successor once booted, nor the busy one
    assert busy.result() == 200


def test_hup_replaces_every_worker(start_server) -> None:
    srv = start_server("prefork", "--workers", "2")
    before = srv.workers_become(2)
    srv.signal(signal.SIGHUP)
    after = srv.workers_become(2, exclude=before)
    assert not after & before
    assert srv.counters()["worker_exits"]["clean"] == 2
    assert srv.get("/").status_code == 200


@pytest.mark.parametrize("flags", [(), ("--reuseport",)], ids=["shared", "reuseport"])
def test_hup_keeps_the_old_workers_serving_until_the_new_have_booted(start_server, flags: tuple[str, ...]) -> None:
    # Each boot takes 5 s here (a big app, a busy machine): if the old workers left at the HUP, every request for
    # those 5 s would wait in the queue for a new one. They serve on until the new ones have booted. We ask for
    # 2 s after the master's line: 3 s of margin for a slow log reader or a slow client on a loaded machine.
    srv = start_server("prefork", "--workers", "2", *flags, env={"WEBMODELS_FAULT_BOOT_DELAY": "5.0"})
    before = srv.workers_become(2, timeout=30)
    srv.signal(signal.SIGHUP)
    srv.said("SIGHUP: replacing all 2 workers", timeout=10)
    t_end, answered = time.monotonic() + 2.0, set()
    while time.monotonic() < t_end:  # well inside the 5 s boot: the old workers answer, each in far less than it
        with httpx.Client(base_url=srv.url, timeout=1.5, headers={"Connection": "close"}) as c:
            answered.add(c.get("/whoami").json()["pid"])
        time.sleep(0.05)
    assert answered <= before, (answered, before)
    after = srv.workers_become(2, timeout=30, exclude=before)  # and then the old ones do retire
    assert srv.counters()["worker_exits"]["clean"] == 2 and not after & before
    srv.said("replaced (SIGHUP), its successor has booted; retiring")


def test_a_worker_that_cannot_boot_stops_the_server(start_server) -> None:
    srv = start_server("prefork", "--workers", "2", env={"WEBMODELS_FAULT_BOOT": "1"})
    assert srv.wait_exit(10) == EXIT_BOOT
    srv.said("failed to boot")
    srv.said("respawning forever")
    assert srv.log.count("spawned (pid") <= 2  # no respawn loop


# -- scaling on request -----------------------------------------------------------------------------------------------------
def test_lab_scale_route_adds_and_removes_workers(start_server) -> None:
    srv = start_server("prefork", "--workers", "2")
    r = httpx.post(srv.url + "/_lab/scale?delta=3", timeout=10)
    assert r.status_code == 200 and r.json()["target_workers"] == 5
    srv.workers_become(5)
    r = httpx.post(srv.url + "/_lab/scale?delta=-2", timeout=10)
    assert r.json()["target_workers"] == 3
    srv.workers_become(3)
    assert httpx.post(srv.url + "/_lab/scale?delta=99", timeout=5).json()["param"] == "delta"


def test_lab_scale_is_409_without_workers_and_404_without_faults(start_server) -> None:
    tp = start_server("threadpool")
    assert httpx.post(tp.url + "/_lab/scale?delta=1", timeout=5).status_code == 409
    quiet = start_server("prefork", "--workers", "1", faults=False)
    assert httpx.post(quiet.url + "/_lab/scale?delta=1", timeout=5).status_code == 404


# -- memory is per process ---------------------------------------------------------------------------------------------------
def test_each_worker_has_its_own_counter(start_server) -> None:
    srv = start_server("prefork", "--workers", "2")
    srv.workers_become(2)
    results: list[dict] = []
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            data = c.get("/counter?mode=unsafe&window_ms=150").json()
        with lock:
            results.append(data)

    for _ in range(3):  # two at a time: while one worker waits in its window, the other must take the next
        pair = [threading.Thread(target=one) for _ in range(2)]
        for t in pair:
            t.start()
        for t in pair:
            t.join(10)
    assert len(results) == 6
    by_pid: dict[int, list[int]] = {}
    for data in results:
        by_pid.setdefault(data["pid"], []).append(data["value"])
    assert len(by_pid) == 2, by_pid
    for pid, values in by_pid.items():
        # one request at a time per worker, so no update is lost inside a worker; but each counts only its own
        assert sorted(values) == list(range(1, len(values) + 1)), (pid, values)
    assert max(max(v) for v in by_pid.values()) < 6


def test_idle_workers_take_turns(start_server) -> None:
    # One client, one request at a time: every worker is idle at each connection, and each must get its turn
    # (the bench reads each process's /counter back this way; a worker that took them all would hide the rest).
    srv = start_server("prefork", "--workers", "4")
    workers = srv.workers_become(4)
    seen: dict[int, int] = {}
    with httpx.Client(base_url=srv.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(40):
            pid = c.get("/whoami").json()["pid"]
            seen[pid] = seen.get(pid, 0) + 1
    assert set(seen) == workers and min(seen.values()) >= 5, seen


# -- /metrics across worker deaths: one board, counts never go backwards ----------------------------------------------------
def test_prefork_sum_over_workers_is_monotonic_across_a_worker_kill(start_server) -> None:
    srv = start_server("prefork", "--workers", "3")

    def count() -> float:
        return sum(n for (_, route, _), n in histogram(srv.get("/metrics").text).items() if route == "/")

    with srv.client() as c:
        for _ in range(30):
            c.get("/")
    first = count()
    assert first == 30  # whichever worker answers, it reports all three
    workers = sorted(srv.worker_pids())
    with srv.client() as c:
        r = c.post("/_lab/kill", params={"target": "worker", "pid": workers[0]})
        assert r.status_code == 202
    srv.workers_become(3, exclude={workers[0]})
    seen = [first]
    with srv.client() as c:
        for i in range(20):
            c.get("/")
            if i % 5 == 0:
                seen.append(count())
    seen.append(count())
    assert seen == sorted(seen) and seen[-1] == 50, seen
    fams = {f.name: f for f in text_string_to_metric_families(srv.get("/metrics").text)}
    restarts = {s.labels["reason"]: s.value for s in fams["webmodels_worker_restarts"].samples}
    assert restarts["signal"] == 1
    assert [s.value for s in fams["webmodels_faults_injected"].samples if s.labels["kind"] == "kill"] == [1]


class _Loop(threading.Thread):
    """Call FN in a loop until stopped; FN's errors are ignored (a killed worker resets its connections)."""

    def __init__(self, fn) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.fn, self.stopped = fn, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.fn()
            except Exception:  # noqa: BLE001
                time.sleep(0.005)

    def stop(self) -> None:
        self.stopped.set()
        self.join(20)


def hello(srv: Server) -> int:
    with Conn(srv, timeout=10) as c:
        return c.call("/", "Connection: close\r\n").status


@pytest.mark.parametrize("engine", ["sync", "loop"])
def test_prefork_counters_never_go_backwards_while_workers_are_killed_under_load(engine, start_server) -> None:
    """Kill a worker five times (one of them by a crash fault) under load, scraping all along."""
    srv = start_server("prefork", "--engine", engine, "--workers", "3")
    load = [_Loop(lambda: hello(srv)) for _ in range(2)]
    scrapes: list[dict] = []
    faults: list[float] = []

    def scrape() -> None:
        text = srv.get("/metrics").text
        scrapes.append(histogram(text))
        faults.append(sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                          if s.name == "webmodels_faults_injected_total"))
        time.sleep(0.02)

    scraper = _Loop(scrape)
    for t in (*load, scraper):
        t.start()
    for pid in srv.per_worker():  # shared pages, never a file (README "Metrics")
        with open(f"/proc/{pid}/maps") as f:
            files = {line.split()[-1] for line in f if len(line.split()) > 5}
        # (code is mapped from files too: a checkout under /tmp maps its venv's .so files from there)
        data = {name for name in files if name.startswith(("/dev/shm", "/tmp")) and ".so" not in Path(name).suffixes}
        assert not data, data
    try:
        for round_ in range(5):
            workers = sorted(srv.workers_become(3))
            if round_ == 2:  # a crash of whichever worker answers: it counts the fault first, then dies of it
                with pytest.raises(Exception):
                    srv.get("/fault/crash", headers={"Connection": "close"})
            else:
                os.kill(workers[round_ % 3], signal.SIGKILL)
            wait_for(lambda: not set(workers) <= set(srv.per_worker()), 10, 0.05, "a worker gone")
            mark = len(scrapes)  # scrapes on the new set of workers, under load, before the next kill
            wait_for(lambda: len(scrapes) >= mark + 2, 20, 0.02, "two more scrapes")
    finally:
        for t in (*load, scraper):
            t.stop()
    assert len(scrapes) >= 10 and scrapes[-1][("GET", "/", "200")] > scrapes[0].get(("GET", "/", "200"), 0)
    for before, after in zip(scrapes, scrapes[1:]):
        assert all(after.get(k, -1) >= n for k, n in before.items()), (before, after)
    assert faults == sorted(faults) and faults[-1] >= 1
    # Exact, but for a worker killed between counting a request for /_lab/stats and tallying it (microseconds)
    balanced(srv, slack=4)
