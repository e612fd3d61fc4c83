"""The fault accounting's arithmetic, without Locust: classification, merging, downtime, recovery. With a real
Locust against real servers: test_lab_locust.py."""

from __future__ import annotations

import re

from loadtest.accounting import (COLLATERAL, EXPECTED, OK, RecoveryWatch, ServerTally, Tally, classify, downtime,
                                 format_table, injection_key)
from loadtest.workloads import WORKLOADS, calls


def test_classify():
    assert classify(True, False) == OK
    assert classify(False, False) == COLLATERAL
    assert classify(False, True) == EXPECTED
    assert classify(True, True) == EXPECTED  # a leak answers 200 and is still the fault


def feed(t: Tally, server: str, events) -> None:
    for end, ok in events:
        t.record(server, ok, False, end, None if ok else "ConnectionRefusedError")


def test_downtime_is_the_longest_all_failed_streak():
    t = Tally()
    feed(t, "s", [(100.0, True), (100.5, False), (100.9, False), (101.0, True),  # 0.4 s
                  (102.0, True), (102.05, False), (103.5, False), (104.25, False)])  # open to the end: 2.2 s
    s = t.summary()["s"]
    assert s["downtime_ms"] == 2200.0 and s["down_at_end"] and s["downtime_from"] == 102.05
    assert s["ok"] + s["expected"] + s["collateral"] == s["requests"] == 8 and s["balanced"]


def test_a_success_anywhere_breaks_a_streak_and_merge_is_split_independent():
    a, b, whole = Tally(), Tally(), Tally()
    ev_a = [(10.0, False), (10.3, False), (10.7, False)]
    ev_b = [(10.5, True), (11.2, True)]
    feed(a, "s", ev_a), feed(b, "s", ev_b), feed(whole, "s", ev_a + ev_b)
    merged = Tally()
    for part in (a, b):
        merged.merge(Tally.from_dict(part.to_dict()))  # as the master receives it
    assert merged.summary() == whole.summary()
    assert merged.summary()["s"]["downtime_ms"] == 300.0  # 10.0 → 10.3, broken by the success at 10.5


def test_fault_requests_are_expected_and_do_not_count_as_downtime():
    t = Tally()
    t.record("p", False, True, 5.0, "RemoteDisconnected")
    feed(t, "p", [(5.01, True)])
    s = t.summary()["p"]
    assert (s["expected"], s["ok"], s["collateral"], s["downtime_ms"], s["fault_failed"]) == (1, 1, 0, 0.0, 1)


def test_recovery_from_injection_to_next_success():
    w, t = RecoveryWatch(), Tally()
    w.on_success("p", 9.8)
    w.on_success("p", 9.95)  # sent before the crash (it may end just after): not a recovery
    assert w.on_injected("p", 10.0) is None  # nothing sent after it yet: pending
    t.add_injection("p", "crash", 10.0)
    assert w.on_success("p", 9.99) == []  # still one sent before the injection
    assert w.on_success("p", 10.012) == [(injection_key(10.0), 10.012)]
    t.add_recovery("p", injection_key(10.0), 10.012)
    t.add_recovery("p", injection_key(10.0), 10.5)  # another process saw a later one: the earliest wins
    assert w.on_injected("p", 10.001) == 10.012  # already seen (message arrived late)
    t.add_injection("e", "crash", 20.0)
    feed(t, "e", [(20.1, False)])
    t.add_injection("e", "crash", 30.0)  # after the last request: not judged
    s = t.summary()
    assert s["p"]["recovery_ms"] == 12.0 and s["p"]["unrecovered"] == 0
    assert s["e"]["recovery_ms"] is None and s["e"]["unrecovered"] == 1 and s["e"]["pending"] == 1
    assert "never" in format_table(s)


def test_downtime_mixed_bins():
    st = ServerTally()
    for end, kind in [(1.01, OK), (1.02, COLLATERAL), (1.05, COLLATERAL), (1.31, COLLATERAL), (1.33, OK)]:
        st.record(kind, end)
    d = downtime(st.bins)
    assert not d["open"] and 290 <= d["ms"] <= 320  # 1.02 → 1.31 within a bin's precision


def test_workloads():
    for w in WORKLOADS:
        assert calls(w)
    assert {c.name for c in calls("mixed")} == {"/", "/io", "/cpu", "/bytes"}
    assert calls("io", io_ms=7)[0].path == "/io?ms=7"


# -- exact counts: a scripted timeline with known ok / expected / collateral ------------------------------------
# (server, ok, fault, end, error): what the Locust listener records for each request, in completion order.
TIMELINE = [
    ("prefork", True, False, 100.00, None),
    ("prefork", False, True, 100.05, "RemoteDisconnected"),  # the crash request itself: expected
    ("prefork", True, False, 100.06, None),
    ("prefork", True, True, 100.07, None),  # a leak answers 200 and is still the fault: expected
    ("prefork", True, False, 100.30, None),
    ("threadpool", True, False, 100.00, None),
    ("threadpool", False, False, 100.10, "HTTP 503"),
    ("threadpool", False, False, 100.12, "HTTP 503"),
    ("threadpool", True, False, 100.25, None),
    ("threadpool", False, False, 100.40, "HTTP 503"),
    ("eventloop", True, False, 100.00, None),
    ("eventloop", False, True, 100.10, "RemoteDisconnected"),
    ("eventloop", False, False, 100.20, "ConnectionRefusedError"),
    ("eventloop", False, False, 100.50, "ConnectionRefusedError"),
    ("eventloop", False, False, 101.20, "ConnectionRefusedError"),
]
WANT = {  # server: (requests, ok, expected, collateral, fault_failed, errors, downtime_ms, down_at_end)
    "prefork": (5, 3, 2, 0, 1, {}, 0.0, False),
    "threadpool": (5, 2, 0, 3, 0, {"HTTP 503": 3}, 20.0, True),
    "eventloop": (5, 1, 1, 3, 1, {"ConnectionRefusedError": 3}, 1000.0, True),
}


def scripted(events=TIMELINE) -> Tally:
    t = Tally()
    for server, ok, fault, end, error in events:
        t.record(server, ok, fault, end, error)
    return t


def exact(summary: dict) -> dict:
    return {name: (s["requests"], s["ok"], s["expected"], s["collateral"], s["fault_failed"], s["errors"],
                   s["downtime_ms"], s["down_at_end"]) for name, s in summary.items()}


def test_a_scripted_timeline_gives_exact_counts():
    s = scripted().summary(order=("threadpool", "prefork", "eventloop"))
    assert list(s) == ["threadpool", "prefork", "eventloop"]
    assert exact(s) == WANT
    assert all(row["balanced"] for row in s.values())
    # threadpool: the 503 streak 100.10 → 100.12 is broken by the success at 100.25; the last 503 opens a new
    # one that never closes (a single failure: 0 ms, but the longest streak is the earlier 20 ms one)
    assert s["threadpool"]["downtime_from"] == 100.10 and s["threadpool"]["downtime_to"] == 100.12


def test_exact_counts_survive_any_split_over_processes_and_the_wire():
    # Every way of dealing the same requests to 3 Locust processes adds up to the same table.
    import random

    rng = random.Random(7)
    for _ in range(20):
        parts = [Tally() for _ in range(3)]
        for server, ok, fault, end, error in TIMELINE:
            rng.choice(parts).record(server, ok, fault, end, error)
        master = Tally()
        for part in parts:
            master.merge(Tally.from_dict(part.to_dict()))
        assert exact(master.summary()) == WANT


def test_the_table_prints_the_exact_counts():
    table = format_table(scripted().summary(order=("threadpool", "prefork", "eventloop")))
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert rows["threadpool"][1:5] == ["5", "2", "0", "3"]
    assert rows["prefork"][1:5] == ["5", "3", "2", "0"]
    assert rows["eventloop"][1:5] == ["5", "1", "1", "3"]
    assert all(r[-1] == "yes" for r in rows.values())


# -- the Locust request listener itself, in a subprocess (Locust monkey-patches whatever imports it) ---------------
LISTENER_SCRIPT = r"""
import json, sys
sys.argv = ["locust"]
sys.path.insert(0, "loadtest")
import locustfile as lf

class Resp:
    def __init__(self, status): self.status_code = status

class CatchResponseError(Exception):
    pass

calls = [  # (exception, response status, fault)
    (None, 200, False), (None, 200, False),
    (CatchResponseError("503 Service Unavailable"), 503, False),  # an HTTP error: collateral
    (CatchResponseError("500 Internal Server Error"), 500, False),
    (ConnectionRefusedError(111, "refused"), 0, False),  # no response at all: collateral
    (CatchResponseError("503"), 503, True),  # a fault request that failed: expected
    (None, 200, True),
]
for i, (exc, status, fault) in enumerate(calls):
    lf._request("GET", "/", 5.0, 0, exception=exc, context={"server": "threadpool", "fault": fault},
                start_time=1000.0 + i, response=Resp(status))
print(json.dumps(lf.lab.outbox.summary()["threadpool"]))
"""


def test_the_locust_listener_counts_http_errors_as_collateral():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", LISTENER_SCRIPT], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (row["requests"], row["ok"], row["expected"], row["collateral"], row["fault_failed"]) == (7, 2, 2, 3, 1)
    assert row["errors"] == {"HTTP 503": 1, "HTTP 500": 1, "ConnectionRefusedError": 1}


def test_backoff_is_split_from_the_models_own_start():
    from loadtest.accounting import restart_split
    # the supervisor's records: died → (waited) → started → (the model starts) → accepting
    restarts = [{"died_at": 10.0, "started_at": 16.4, "ready_at": 16.6},  # 6.4 s of back-off, 0.2 s of start
                {"died_at": 30.0, "started_at": 30.1, "ready_at": 30.3},
                {"died_at": 50.0, "started_at": None, "ready_at": None}]  # still waiting when the run ended
    down = {"from": 10.01, "to": 16.59}  # the longest all-failed streak, from requests
    s = restart_split(restarts, down, run_from=5.0, run_to=51.0)
    assert s["restarts"] == 3
    assert abs(s["backoff_ms"] - 6390.0) < 0.01  # the wait inside the streak: "of which back-off"
    assert abs(s["backoff_total_ms"] - (6400 + 100 + 1000)) < 0.01  # the last wait counts up to the run's end
    assert abs(s["start_total_ms"] - 400.0) < 0.01
    assert restart_split(None, down, 5.0, 51.0)["backoff_ms"] is None  # no supervisor (compose): unknown
    assert restart_split([], down, 5.0, 51.0)["backoff_ms"] == 0.0  # a supervisor and no restart: none


def test_table_has_a_backoff_column():
    t = Tally()
    feed(t, "eventloop", [(10.0, True), (10.5, False), (16.5, False), (16.7, True)])
    summary = t.summary(["eventloop"], {"eventloop": [{"died_at": 10.4, "started_at": 16.4, "ready_at": 16.6}]},
                        run_from=9.0, run_to=17.0)
    row = summary["eventloop"]
    assert row["downtime_ms"] == 6000.0 and abs(row["backoff_ms"] - 5900.0) < 0.01
    table = format_table(summary)
    assert "back-off ms" in table.splitlines()[0] and "5900.0" in table.splitlines()[2]
    assert format_table(t.summary(["eventloop"])).splitlines()[2].split()[6] == "-"  # unknown: no supervisor


def test_downtime_is_one_definition_with_its_dead_part():
    # issue 18's hang-then-kill: users fail from the hang on (33.463 s), the process is dead for only the last
    # 293 ms (SIGKILL → 100 ms back-off → 193 ms start): the tab and the supervisor's log must say both, in
    # the same words
    t = Tally()
    feed(t, "eventloop", [(99.9, True), *[(100.0 + i * 0.5, False) for i in range(67)], (133.463, False),
                          (133.5, True)])
    restarts = {"eventloop": [{"died_at": 133.17, "started_at": 133.27, "ready_at": 133.463}]}
    row = t.summary(["eventloop"], restarts, run_from=90.0, run_to=140.0)["eventloop"]
    assert row["downtime_ms"] == 33463.0
    assert abs(row["dead_ms"] - 293.0) < 0.01 and abs(row["backoff_ms"] - 100.0) < 0.01, row
    assert t.summary(["eventloop"])["eventloop"]["dead_ms"] is None  # no supervisor record: unknown, not 0
    header, _, line = format_table({"eventloop": row}).splitlines()
    assert "downtime ms" in header and "dead ms" in header and "back-off ms" in header
    assert re.split(r" {2,}", line)[5:8] == ["33463.0", "293.0", "100.0"], line


def test_table_columns_never_run_together():
    # the figures of a long crash run (issue 18: "60060.060512.7 +10never" was three cells)
    row = {"requests": 1234567, "ok": 1170000, "expected": 4567, "collateral": 60000, "balanced": True,
           "downtime_ms": 60060.0, "dead_ms": 60512.7, "backoff_ms": 59999.9, "recovery_ms": 60512.7,
           "unrecovered": 10, "down_at_end": True}
    short = {**row, "requests": 5, "ok": 5, "expected": 0, "collateral": 0, "downtime_ms": 0.0, "dead_ms": None,
             "backoff_ms": None, "recovery_ms": None, "unrecovered": 0, "down_at_end": False}
    table = format_table({"hybrid-threads": row, "threadpool": short})
    header, rule, *lines = table.splitlines()
    titles = re.split(r" {2,}", header.strip())
    assert len(titles) == 11 and len(rule) == len(header)
    cells = [re.split(r" {2,}", line.strip()) for line in lines]
    assert cells[0] == ["hybrid-threads", "1234567", "1170000", "4567", "60000", "60060.0", "60512.7", "59999.9",
                        "60512.7 (+10 never)", "down", "yes"], cells[0]
    assert cells[1] == ["threadpool", "5", "5", "0", "0", "0.0", "-", "-", "-", "up", "yes"], cells[1]
    for title in titles[1:9]:  # numbers are right-aligned under their title
        end = header.index(title) + len(title)
        assert all(line[end - 1] != " " for line in lines), (title, table)
