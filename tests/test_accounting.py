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
