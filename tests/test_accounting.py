"""The fault accounting's arithmetic, without Locust: classification, merging, downtime, recovery."""

from __future__ import annotations

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
