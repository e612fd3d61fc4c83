"""The exercises table (webmodels.exercises) without a lab: the README matches it, every part names something real,
and each figure's verdict rule says ✓ to what the lesson predicts and ✗ to what it does not.

The figures are fed hand-made observations here — samples of /_lab/stats, the accounting, events — so each
rule is pinned down in milliseconds; tests/test_exercises_lab.py runs every exercise for real.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from loadtest import workloads
from webmodels import actions, exercise_actions, exercises
from webmodels.exercises import EXERCISES, README, Setup, exercise, localize, with_generated
from webmodels.figures import DIFFERS, OK, UNSURE, WAITING, Obs, users_in_flight
from webmodels.lab import LAB_PORTS, SERVERS

ROOT = Path(__file__).resolve().parent.parent


# -- the table against the README, the lab and Locust ---------------------------------------------------------------
def test_readme_sections_are_generated_from_the_table():
    text = README.read_text()
    assert with_generated(text) == text, f"the README's exercises drifted from the table: run {exercises.WRITE}"
    flat = " ".join(text.split())  # as read, whatever the line breaks
    for e in EXERCISES:  # each exercise's question, commands and predictions are in it
        assert " ".join(e.question.split()) in flat and " ".join(e.why.split()) in flat
        assert all(a.command in text for a in e.actions)
        assert all(" ".join(f.predicts.split()) in flat for f in e.figures)


def test_the_readme_shows_the_tab_with_screenshots_that_exist():
    text = README.read_text()
    assert "/?tab=exercises" in text
    shots = re.findall(r"\]\((docs/exercises-[\w-]+\.png)\)", text)
    assert shots and all((ROOT / shot).stat().st_size > 10_000 for shot in shots), shots


def test_every_exercise_tests_a_row_of_the_readme_table():
    rows = set(re.findall(r"^\| \*\*(.+?)\*\* \|", README.read_text(), re.M))
    assert {e.row for e in EXERCISES} <= rows, {e.row for e in EXERCISES} - rows
    assert len({e.id for e in EXERCISES}) == len(EXERCISES)


def test_every_setup_names_real_user_classes_workloads_and_options():
    options = set(re.findall(r'add_argument\("--([\w-]+)"', (ROOT / "loadtest" / "locustfile.py").read_text()))
    for e in EXERCISES:
        assert len({s.name for s in e.setups}) == len(e.setups), e.id  # several setups are told apart by name
        for s in e.setups:
            assert set(s.classes) <= set(SERVERS) and s.workload in workloads.WORKLOADS, (e.id, s)
            assert {k.replace("_", "-") for k in s.params} <= options, (e.id, s.params)
            assert not s.classes or (s.users % len(s.classes) == 0 and s.spawn_rate > 0), (e.id, s)


def test_every_action_is_a_lab_action_with_a_shell_command_that_parses():
    verbs = set(re.findall(r'action\.verb == "(\w+)"', Path(exercise_actions.__file__).read_text()))
    for e in EXERCISES:
        assert len({a.key for a in e.actions}) == len(e.actions), e.id
        for a in e.actions:
            assert a.verb in verbs, (e.id, a.key)
            assert a.server in SERVERS or (a.verb == "slow" and a.params.get("stop")), (e.id, a.key)
            if a.verb == "fault":
                assert a.params["kind"] in actions.FAULTS
            if a.verb in ("scale", "fattest") or a.params.get("target") == "worker":
                assert SERVERS[a.server].master, (e.id, a.key)
            if not a.command.startswith("Ctrl-C"):
                res = subprocess.run(["bash", "-n", "-c", a.command], capture_output=True, text=True)
                assert res.returncode == 0, (a.command, res.stderr)


def test_set_up_sends_every_custom_option_so_nothing_carries_over():
    defaults = {"workload": "hello", "io_ms": 50, "cpu_ms": 10, "fault": "none", "fault_every": 5.0}
    form = exercise("1").setups[0].form({**defaults, "fault": "crash"})  # a fault left on by the last run...
    fields = dict(form)
    assert fields["fault"] == "crash"  # ...is what the defaults say: they are the lab's start values
    form = Setup(("prefork",), 5, 5, "io", {"io_ms": 200}).form(defaults)
    assert ("user_classes", "PreforkUser") in form and dict(form)["io_ms"] == "200" and dict(form)["fault"] == "none"
    assert dict(form)["user_count"] == "5" and dict(form)["workload"] == "io"


def test_commands_are_shifted_to_the_lab_they_run_against():
    urls = {name: f"http://127.0.0.1:{port + 10000}" for name, port in LAB_PORTS.items()}
    assert localize("webmodels kill prefork --worker", urls) == "webmodels kill prefork --worker --port-offset 10000"
    assert localize("curl -m 2 'http://127.0.0.1:8003/fault/hang?s=12'", urls) == \
        "curl -m 2 'http://127.0.0.1:18003/fault/hang?s=12'"
    compose = {name: f"http://{name}:{port}" for name, port in LAB_PORTS.items()}
    assert localize("curl http://127.0.0.1:8003/", compose) == "curl http://127.0.0.1:8003/"  # typed on the host
    assert localize("curl http://127.0.0.1:8003/", {n: f"http://127.0.0.1:{p}" for n, p in LAB_PORTS.items()}) == \
        "curl http://127.0.0.1:8003/"


# -- observations, by hand ------------------------------------------------------------------------------------------
T0 = 1000.0


def worker_stats(pid: int, workers: list[tuple[int, int]], answered_by: int | None = None, **counters) -> dict:
    """/_lab/stats of a master PID with WORKERS [(pid, in flight)]; the stats request is in flight on ANSWERED_BY."""
    answered_by = answered_by or workers[0][0]
    per = [{"pid": w, "in_flight": n + (w == answered_by), "accepted": 0, "loop_lag_ms": None} for w, n in workers]
    return {"pid": pid, "answered_by": answered_by, "started_at": 1.0, "per_worker": per,
            "config": {"workers": 4, "timeout": 10}, "counters": {"target_workers": len(workers), **counters},
            "totals": {}, "processes": []}


def single_stats(pid: int, in_flight: int, started_at: float = 1.0) -> dict:
    return {"pid": pid, "answered_by": pid, "started_at": started_at, "counters": {"in_flight": in_flight + 1},
            "per_worker": [{"pid": pid, "in_flight": in_flight + 1}], "totals": {}, "processes": []}


def obs(now: float, samples: list[tuple[float, dict]], acc: dict | None = None, events: list | None = None,
        results: dict | None = None, setup: str = "") -> Obs:
    return Obs({"now": now, "since": T0, "acc": acc or {}, "events": events or [], "results": results or {},
                "has_events": True, "setup": setup,
                "samples": [{"t": t, "servers": {name: {"state": "up" if st else "down", "stats": st}
                                                 for name, st in servers.items()}, "acc": {}}
                            for t, servers in samples]})


def reading(ex_id: str, key: str, o: Obs) -> dict:
    return next(f for f in exercise(ex_id).observe(o) if f["key"] == key)


def test_the_stats_request_itself_is_not_a_user_in_flight():
    st = worker_stats(1, [(11, 2), (12, 3)], answered_by=12)
    assert users_in_flight(st, 11) == 2 and users_in_flight(st, 12) == 3
    assert users_in_flight(single_stats(5, 6)) == 6


def test_a_killed_worker_costs_what_it_held_in_flight():
    before = worker_stats(1, [(11, 4), (12, 2)])
    after = worker_stats(1, [(13, 0), (12, 2)], answered_by=12)
    samples = [(T0 + 1, {"hybrid-threads": before}), (T0 + 2, {"hybrid-threads": after})]
    early = obs(T0 + 2.5, samples, {"hybrid-threads": {"collateral": 0}})
    assert reading("H1", "hybrid-threads-collateral", early)["verdict"] == WAITING  # the accounting is late
    for lost, verdict in ((4, OK), (5, OK), (6, DIFFERS), (0, DIFFERS)):
        o = obs(T0 + 6, samples, {"hybrid-threads": {"collateral": lost}})
        r = reading("H1", "hybrid-threads-collateral", o)
        assert r["verdict"] == verdict and r["predicted"].startswith("4 "), (lost, r)


def test_a_kill_is_judged_against_the_split_it_read_at_the_kill_not_the_older_sample():
    # the tab samples about once a second; `webmodels kill --worker` reads the split itself just before the
    # SIGKILL and logs it: a busy worker's count moves in between (CI saw a sample's 3 · 4 turn 4 · 3)
    before = worker_stats(1, [(11, 3), (12, 4)])
    after = worker_stats(1, [(13, 0), (12, 3)], answered_by=12)
    samples = [(T0 + 1, {"hybrid-threads": before}), (T0 + 2, {"hybrid-threads": after})]
    kill = {"t": T0 + 1.5, "server": "hybrid-threads", "kind": "kill", "pid": 11, "target": "worker",
            "split": [[11, 5], [12, 3]], "in_flight": 5}
    o = obs(T0 + 6, samples, {"hybrid-threads": {"collateral": 5}}, events=[kill])
    split = reading("H1", "hybrid-threads-split", o)
    assert split["value"] == [5, 3] and split["text"].endswith("at the kill") and "pids 11 · 12" in split["text"], split
    lost = reading("H1", "hybrid-threads-collateral", o)
    assert lost["verdict"] == OK and lost["predicted"].startswith("5 "), lost
    no_split = obs(T0 + 6, samples, {"hybrid-threads": {"collateral": 3}},  # an older kill event: the sample's
                   events=[{k: v for k, v in kill.items() if k not in ("split", "in_flight")}])
    assert reading("H1", "hybrid-threads-split", no_split)["value"] == [3, 4]
    assert reading("H1", "hybrid-threads-collateral", no_split)["predicted"].startswith("3 ")


def test_a_prefork_worker_costs_at_most_its_one_request():
    samples = [(T0 + 1, {"prefork": worker_stats(1, [(11, 1), (12, 1), (13, 1), (14, 1)])}),
               (T0 + 2, {"prefork": worker_stats(1, [(15, 0), (12, 1), (13, 1), (14, 1)])})]
    ok = obs(T0 + 9, samples, {"prefork": {"collateral": 1, "downtime_ms": 0.0}})
    assert reading("1", "prefork-collateral", ok)["verdict"] == OK
    assert reading("1", "prefork-downtime", ok)["verdict"] == OK
    assert reading("1", "prefork-respawn", ok)["verdict"] == OK  # back to the lab's 4
    gone = samples + [(T0 + 3, {"prefork": worker_stats(1, [(12, 1), (13, 1), (14, 1)])})]
    assert reading("1", "prefork-respawn", obs(T0 + 9, gone, {"prefork": {"collateral": 1}}))["verdict"] == DIFFERS
    every = obs(T0 + 9, samples, {"prefork": {"collateral": 4, "downtime_ms": 800.0}})  # every worker died with it
    assert reading("1", "prefork-collateral", every)["verdict"] == DIFFERS
    assert reading("1", "prefork-downtime", every)["verdict"] == DIFFERS


def test_a_crashed_single_process_loses_every_request_and_is_down_a_while():
    samples = [(T0 + 1, {"eventloop": single_stats(5, 6)}), (T0 + 2, {"eventloop": None}),
               (T0 + 3, {"eventloop": single_stats(6, 6, started_at=2.0)})]
    o = obs(T0 + 9, samples, {"eventloop": {"collateral": 20, "downtime_ms": 300.0}})
    assert [d.pid for d in o.deaths("eventloop")] == [5] and o.deaths("eventloop")[0].t == T0 + 2
    assert reading("1", "eventloop-collateral", o)["verdict"] == OK
    assert reading("1", "eventloop-downtime", o)["verdict"] == OK
    spared = obs(T0 + 9, samples, {"eventloop": {"collateral": 2, "downtime_ms": 0.0}})
    assert reading("1", "eventloop-collateral", spared)["verdict"] == DIFFERS
    assert reading("1", "eventloop-downtime", spared)["verdict"] == DIFFERS


def test_a_hung_worker_must_be_killed_about_timeout_after_its_hang():
    hang = [{"t": T0 + 1, "server": "prefork", "kind": "hang", "path": "/fault/hang?s=3600"}]
    base = worker_stats(1, [(11, 1)], worker_exits={"timeout": 0})
    killed = worker_stats(1, [(12, 0)], worker_exits={"timeout": 1})
    samples = [(T0 + 0.5, {"prefork": base}), (T0 + 11.5, {"prefork": killed})]
    assert reading("2", "prefork-timeout", obs(T0 + 12, samples, events=hang))["verdict"] == OK
    never = [(T0 + 0.5, {"prefork": base}), (T0 + 30, {"prefork": base})]
    assert reading("2", "prefork-timeout", obs(T0 + 5, never, events=hang))["verdict"] == WAITING
    assert reading("2", "prefork-timeout", obs(T0 + 30, never, events=hang))["verdict"] == DIFFERS


def test_a_hung_loop_is_silent_and_a_hung_thread_stays_busy():
    hang = [{"t": T0 + 1, "server": "eventloop", "kind": "hang", "path": "/fault/hang?s=12"}]
    silent = [(T0 + 0.5, {"eventloop": single_stats(5, 0)})] + [(T0 + 1 + i, {"eventloop": None}) for i in range(12)]
    silent.append((T0 + 14, {"eventloop": single_stats(5, 0)}))
    assert reading("2", "eventloop-stall", obs(T0 + 15, silent, events=hang))["verdict"] == OK
    chatty = [(T0 + i, {"eventloop": single_stats(5, 0)}) for i in range(15)]
    assert reading("2", "eventloop-stall", obs(T0 + 15, chatty, events=hang))["verdict"] == DIFFERS
    hung = [{"t": T0 + 1, "server": "threadpool", "kind": "hang", "path": "/fault/hang?s=3600"}]
    pool = lambda busy: {"threadpool": {**single_stats(7, busy), "counters": {"in_flight": busy + 1, "pool_size": 32}}}  # noqa: E731
    assert reading("2", "threadpool-busy", obs(T0 + 14, [(T0 + 13, pool(1))], events=hung))["verdict"] == OK
    assert reading("2", "threadpool-busy", obs(T0 + 14, [(T0 + 13, pool(0))], events=hung))["verdict"] == DIFFERS
    no_log = Obs({"now": T0, "since": T0, "samples": [], "has_events": False})
    assert reading("2", "threadpool-busy", no_log)["verdict"] == UNSURE


def test_counter_rules():
    res = lambda key, **facts: {key: {"facts": {"sent": 200, **facts}}}  # noqa: E731
    assert reading("5", "threadpool-unsafe", obs(T0, [], results=res("counter-threadpool", value=40)))["verdict"] == OK
    assert reading("5", "threadpool-unsafe", obs(T0, [], results=res("counter-threadpool", value=200)))["verdict"] == DIFFERS
    assert reading("5", "threadpool-locked", obs(T0, [], results=res("counter-threadpool-locked", value=200)))["verdict"] == OK
    assert reading("5", "threadpool-locked", obs(T0, [], results=res("counter-threadpool-locked", value=199)))["verdict"] == DIFFERS
    per = {"11": 50, "12": 50, "13": 50, "14": 50}
    assert reading("5", "prefork-unsafe", obs(T0, [], results=res("counter-prefork", per_pid=per)))["verdict"] == OK
    short = {"11": 50, "12": 50, "13": 50, "14": 40}
    assert reading("5", "prefork-unsafe", obs(T0, [], results=res("counter-prefork", per_pid=short)))["verdict"] == DIFFERS


def test_memory_rules():
    def prefork(n: int, rss: float, pss: float) -> dict:
        st = worker_stats(1, [(10 + i, 0) for i in range(n)])
        return {**st, "totals": {"rss": rss * 2**20, "pss": pss * 2**20}}
    shared = [(T0 + 1, {"prefork": prefork(4, 120, 40)}), (T0 + 2, {"prefork": prefork(8, 210, 49)})]
    assert reading("6", "pss-per-worker", obs(T0 + 3, shared))["verdict"] == OK
    copied = [(T0 + 1, {"prefork": prefork(4, 120, 40)}), (T0 + 2, {"prefork": prefork(8, 210, 120)})]
    assert reading("6", "pss-per-worker", obs(T0 + 3, copied))["verdict"] == DIFFERS
    assert reading("6", "workers", obs(T0 + 3, shared))["verdict"] == OK


def test_slow_client_rules():
    def o(key: str, ok: int, sent: int, p50: float | None = 1.0) -> Obs:
        return obs(T0, [], results={key: {"facts": {"ok": ok, "sent": sent, "p50_ms": p50}}})
    assert reading("7", "prefork-normal", o("slow-prefork", 0, 8))["verdict"] == OK
    assert reading("7", "prefork-normal", o("slow-prefork", 5, 8))["verdict"] == DIFFERS
    assert reading("7", "prefork-normal", o("slow-prefork", 0, 5))["verdict"] == WAITING
    assert reading("7", "hybrid-loop-normal", o("slow-hybrid-loop", 100, 100, 0.8))["verdict"] == OK
    assert reading("7", "hybrid-loop-normal", o("slow-hybrid-loop", 60, 100, 0.8))["verdict"] == DIFFERS


def test_cpu_rules_say_when_the_machine_has_no_core_to_spare():
    def o(key: str, cores: float, others: float) -> Obs:
        return obs(T0, [], results={key: {"facts": {"cores": cores, "cpu_s": 2.0, "wall_s": 2 / cores,
                                                    "others_cores": others, "machine_cores": 2}}})
    assert reading("4", "threadpool-cores", o("cpu-threadpool", 0.98, 0.1))["verdict"] == OK
    assert reading("4", "threadpool-cores", o("cpu-threadpool", 1.6, 0.1))["verdict"] == DIFFERS
    assert reading("4", "prefork-cores", o("cpu-prefork", 1.8, 0.1))["verdict"] == OK
    assert reading("4", "prefork-cores", o("cpu-prefork", 0.4, 1.5))["verdict"] == UNSURE
    assert reading("4", "prefork-cores", o("cpu-prefork", 0.9, 0.1))["verdict"] == DIFFERS


def test_accept_split_rules():
    def o(split: dict, reuseport: bool) -> Obs:
        return obs(T0, [], results={"fresh-connections": {"facts": {"accepted": split, "reuseport": reuseport}}})
    assert reading("H3", "accept-split", o({"1": 980, "2": 1020}, True))["verdict"] == OK
    assert reading("H3", "accept-split", o({"1": 1600, "2": 400}, True))["verdict"] == DIFFERS
    assert reading("H3", "accept-split", o({"1": 1600, "2": 400}, False))["verdict"] == "info"


def test_a_figure_of_another_setup_waits_and_a_broken_one_says_so():
    o = obs(T0, [], setup="cpu")
    assert reading("4", "prefork-io", o)["verdict"] == WAITING and "Set up: io" in reading("4", "prefork-io", o)["reason"]
    broken = Obs({"now": T0, "since": T0, "samples": [{"t": T0, "servers": {}}], "results": {"fresh-connections": {
        "facts": {"accepted": "not a mapping"}}}, "has_events": True})
    r = reading("H3", "accept-split", broken)
    assert r["verdict"] == UNSURE and "could not read it" in r["reason"]


@pytest.mark.parametrize("ex_id", [e.id for e in EXERCISES])
def test_every_figure_waits_before_anything_happened(ex_id):
    o = Obs({"now": T0, "since": T0, "samples": [], "has_events": True})
    for f in exercise(ex_id).observe(o):
        assert f["verdict"] == WAITING, (ex_id, f)


def test_no_verdict_until_the_accounting_has_counted_past_the_death():
    before = worker_stats(1, [(11, 4), (12, 2)])
    after = worker_stats(1, [(13, 0), (12, 2)], answered_by=12)
    acc = lambda n: {"hybrid-threads": {"requests": n, "collateral": 0}}  # noqa: E731
    doc = {"since": T0, "events": [], "results": {}, "has_events": True,
           "samples": [{"t": T0 + 1, "servers": {"hybrid-threads": {"state": "up", "stats": before}}, "acc": acc(100)},
                       {"t": T0 + 2, "servers": {"hybrid-threads": {"state": "up", "stats": after}}, "acc": acc(100)},
                       {"t": T0 + 4, "servers": {"hybrid-threads": {"state": "up", "stats": after}}, "acc": acc(100)}]}
    late = Obs({**doc, "now": T0 + 9, "acc": acc(100)})  # Locust has reported nothing since: it may still come
    assert reading("H1", "hybrid-threads-collateral", late)["verdict"] == WAITING
    counted = Obs({**doc, "now": T0 + 9, "acc": {"hybrid-threads": {"requests": 160, "collateral": 4}}})
    assert reading("H1", "hybrid-threads-collateral", counted)["verdict"] == OK
