"""The lab's exercises, defined once: question, table row, setup, actions, figures with predictions, why.

DESIGN.md rule 12: the Exercises tab (loadtest/exercises_tab.py) renders this table, the README's exercise
sections are generated from it (`python -m webmodels.exercises --write-readme`; a test fails when they
drift), and the tests that run each exercise as written read their Locust parameters, commands and
predictions from here. Adding an exercise (green threads, next) is one more entry in EXERCISES.

Each exercise says
  - the question and the row of the README's processes-vs-threads table it tests;
  - its setup: the Locust run it needs (user classes by lab server, users, spawn rate, workload and its
    parameters), or none (the actions bring their own load), and what to set by hand if anything;
  - its actions: each one an action of the lab's actions layer (kill, fault, scale: webmodels.actions) or
    an exercise's own (slow clients, the counter race, a leak series, fresh connections:
    webmodels.exercise_actions), with the shell command an attendee would type instead (lab ports);
  - its figures (webmodels.figures): where each is read from, what the lesson predicts, a verdict rule,
    and the likely reason when what happened differs;
  - why, as the README explains it.
Pure data and small functions: no Locust, no I/O.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .figures import (INFO, UNSURE, Obs, Reading, judged, ms, plural, users_in_flight, waiting, worker_split)
from .lab import LAB_PORTS, SERVERS, project_root

USER_CLASSES = {name: s.user_class for name, s in SERVERS.items()}
NUMBERS = {5: "five", 6: "six", 7: "seven"}
ALL = tuple(SERVERS)


def label(server: str) -> str:
    """How people call a lab server: "thread pool", "hybrid-loop"."""
    return SERVERS[server].label


# -- the parts of an exercise ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """The Locust run an exercise needs (no classes: none — stop any run, the actions bring their own load)."""

    classes: tuple[str, ...] = ()  # lab server names; their Locust user classes run
    users: int = 0
    spawn_rate: float = 0
    workload: str = "hello"
    params: Mapping[str, Any] = field(default_factory=dict)  # io_ms, cpu_ms, kb, fault, fault_every, …
    name: str = ""  # when an exercise has several: "cpu", "io"
    by_hand: str = ""  # what the attendee sets by hand (a lab setting), if anything

    def describe(self) -> str:
        """One line for people: "36 users (spawn 36/s) on all six servers, workload io, io ms 200"."""
        if not self.classes:
            return "no Locust load: stop any run (the actions bring their own)"
        who = f"all {NUMBERS.get(len(ALL), len(ALL))} servers" if set(self.classes) == set(ALL) else ", ".join(USER_CLASSES[c] for c in self.classes)
        params = "".join(f", {k.replace('_', ' ')} {v}" for k, v in self.params.items())
        return f"{self.users} users (spawn {self.spawn_rate:g}/s) on {who}, workload {self.workload}{params}"

    def form(self, defaults: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The fields of Locust's POST /swarm that start this run; DEFAULTS: the custom options' start values.

        Every custom option is sent (its default unless the setup names it): Locust keeps the values of the
        last run, so a fault left on by the previous exercise would otherwise carry over.
        """
        fields = [("user_count", str(self.users)), ("spawn_rate", f"{self.spawn_rate:g}"), ("host", "")]
        fields += [("user_classes", USER_CLASSES[c]) for c in self.classes]
        values = {**defaults, "workload": self.workload, **self.params}
        fields += [(k, str(v)) for k, v in values.items()]
        return fields


@dataclass(frozen=True)
class Action:
    """A button of the tab and the shell command that does the same (lab ports; the tests shift them)."""

    key: str
    label: str
    verb: str  # kill | fault | scale (webmodels.actions); slow | counter | leak | connect | fattest (exercise_actions)
    server: str
    command: str
    params: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""  # what differs in Docker, or what the command prints


@dataclass(frozen=True)
class Fig:
    """A figure to observe: LABEL, read from SOURCE, whose lesson PREDICTS (in words, for the README) — READ
    computes the reading now, with its verdict."""

    key: str
    label: str
    source: str
    predicts: str
    read: Callable[[Obs], Reading]
    phase: str = ""  # the name of the Setup it is measured under (an exercise with several), "" = any


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    question: str
    row: str  # the row of the README's processes-vs-threads table it tests
    setups: tuple[Setup, ...]
    actions: tuple[Action, ...]
    figures: tuple[Fig, ...]
    why: str
    more: str = ""  # README-only detail (markdown): variations, Docker, numbers measured here
    section: str = "exercises"  # the README block it is rendered in: exercises | hybrids

    def action(self, key: str) -> Action:
        for a in self.actions:
            if a.key == key:
                return a
        raise KeyError(f"exercise {self.id} has no action {key!r} (it has {', '.join(a.key for a in self.actions)})")

    def observe(self, o: Obs) -> list[dict[str, Any]]:
        """Every figure now: label, source, prediction in words, and the reading with its verdict."""
        out = []
        for f in self.figures:
            try:
                r = f.read(o) if not f.phase or o.setup == f.phase else waiting(f"measured under Set up: {f.phase}")
            except Exception as exc:  # noqa: BLE001 - one broken figure must not blank the others
                r = Reading(None, "?", "", UNSURE, f"could not read it: {type(exc).__name__}: {exc}")
            out.append({"key": f.key, "label": f.label, "source": f.source, "predicts": f.predicts, **r.to_dict()})
        return out


# -- figures shared by several exercises ----------------------------------------------------------------------------
def lost_with_worker(server: str) -> Callable[[Obs], Reading]:
    """Collateral of a master model = the requests its dead workers held in flight (±1: one in transit)."""
    def read(o: Obs) -> Reading:
        deaths = o.settled_deaths(server, f"no {label(server)} worker")
        if isinstance(deaths, Reading):
            return deaths
        want = sum(d.in_flight or 0 for d in deaths)
        got = int(o.acc(server, "collateral"))
        held = " · ".join(f"worker {d.pid} had {d.in_flight}" for d in deaths)
        reason = ("more were lost than the dead workers held: did a request die in transit, or another worker "
                  "with them? see per-worker in-flight" if got > want else
                  "fewer were lost than the dead workers held: did those users finish just before?")
        return judged(abs(got - want) <= 1, got, str(got), f"{want} ({held} in flight)", reason)
    return read


def sync_lost(o: Obs) -> Reading:
    """Prefork: a sync worker holds one request: each death costs at most that one."""
    deaths = o.settled_deaths("prefork", "no prefork worker")
    if isinstance(deaths, Reading):
        return deaths
    got = int(o.acc("prefork", "collateral"))
    return judged(got <= len(deaths), got, str(got),
                  f"≤ {len(deaths)}: one per worker killed, the request it was serving (0 if it was idle)",
                  "more than one request per dead worker: were more workers lost? see Respawns in the Servers tab")


def respawned(server: str) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        deaths = o.deaths(server)
        st = o.latest(server)
        if not deaths or not st:
            return waiting(f"no {label(server)} worker has died yet")
        want = int(st.get("config", {}).get("workers", 0))
        have = len(st.get("per_worker") or [])
        return judged(have == want, have, f"{have} workers ({plural(len(deaths), 'death')} so far)",
                      f"{want} workers: the master respawns each dead one in milliseconds",
                      "the master has not replaced it (yet): look at the lab's log")
    return read


def short_downtime(server: str, bound_ms: float, what: str) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        deaths = o.settled_deaths(server, f"nothing of {label(server)}")
        if isinstance(deaths, Reading):
            return deaths
        got = float(o.acc(server, "downtime_ms", 0.0))
        return judged(got <= bound_ms, got, ms(got), what,
                      "every user request failed for a while: were all users on the dead worker? see per-worker "
                      "in-flight")
    return read


def lost_with_process(server: str) -> Callable[[Obs], Reading]:
    """A single process: its crash costs every request in flight, and every one sent while it is down."""
    def read(o: Obs) -> Reading:
        deaths = o.settled_deaths(server, f"the {label(server)}")
        if isinstance(deaths, Reading) or o.state(server) != "up":
            return deaths if isinstance(deaths, Reading) else waiting(f"counting until it is back up ({o.state(server)})")
        held = sum(d.in_flight or 0 for d in deaths)
        got = int(o.acc(server, "collateral"))
        return judged(got >= held and got > 0, got, str(got),
                      f"≥ {held}: all {held} requests in flight, then every one sent while it is down",
                      "fewer than it had in flight: was the load running when it died?")
    return read


def down_until_restarted(server: str) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        deaths = o.settled_deaths(server, f"the {label(server)}")
        if isinstance(deaths, Reading):
            return deaths
        got = float(o.acc(server, "downtime_ms", 0.0))
        backoff = o.acc(server, "backoff_ms", None)
        state = o.state(server)
        text = ms(got) + (f" (back-off {ms(backoff)})" if backoff else "") + ("" if state == "up" else f", {state} now")
        return judged(got > 0, got, text, "> 0: down until its supervisor restarts it",
                      "no request failed: was the load running when it died?")
    return read


def split_now(server: str) -> Callable[[Obs], Reading]:
    """Context, not a verdict: each worker's requests in flight (keep-alive users stay with their worker) — now,
    or just before the first fault since the start (the split that decides what the fault costs)."""
    def read(o: Obs) -> Reading:
        hit = [d.t for d in o.deaths(server)] + [e["t"] for e in o.events_of(server, ["hang", "crash", "kill"])]
        first = min(hit) if hit else None
        at_kill = o.split_at_kill(server)
        if at_kill and at_kill[0] <= (first or 0) + 1e-3:  # the first fault: a kill that read the split itself
            split, when = at_kill[1], " at the kill"
        else:
            st = o.before(server, first) if hit else o.latest(server)
            if not st:
                return waiting(f"no answer from {label(server)} yet")
            split, when = worker_split(st), " before the fault" if hit else ""
        text = " · ".join(f"{n}" for _, n in split) + " (pids " + " · ".join(str(p) for p, _ in split) + ")"
        return Reading([n for _, n in split], text + when,
                       "any split: users stay on the worker that accepted them", INFO)
    return read


# -- exercise 2: hangs -------------------------------------------------------------------------------------------
def hang_killed_by_timeout(server: str) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        hangs = o.faults_of(server, "hang", f"{label(server)}")
        if isinstance(hangs, Reading):
            return hangs
        st = o.latest(server) or {}
        timeout = float(st.get("config", {}).get("timeout", 10))
        killed = o.exits(server, "timeout")
        want = f"{plural(len(hangs), 'hung worker')} killed about {timeout:g} s after its hang (--timeout), then replaced"
        text = f"{killed} of {len(hangs)} killed"
        if killed >= len(hangs):
            first = o.first(server) or {}
            n0 = int((first.get("counters", {}).get("worker_exits") or {}).get("timeout", 0))
            at = next((ts for ts, st in o.answered(server)
                       if int((st.get("counters", {}).get("worker_exits") or {}).get("timeout", 0)) - n0 >= len(hangs)),
                      o.now)
            after = at - hangs[-1]["t"]
            return judged(after <= timeout * 2 + 2, killed, f"{text}, the last {after:.0f} s after its hang", want,
                          "killed much later than --timeout: was the machine overloaded?")
        if o.now - hangs[-1]["t"] < timeout * 2 + 2:
            return waiting(f"the master kills a hung worker after --timeout {timeout:g} s", text, want)
        return judged(False, killed, text, want, f"still hung after {o.now - hangs[-1]['t']:.0f} s: is --timeout off "
                                                 "(WEBMODELS_TIMEOUT=0)?")
    return read


def threads_lost(o: Obs) -> Reading:
    hangs = o.faults_of("threadpool", "hang", "the thread pool")
    if isinstance(hangs, Reading):
        return hangs
    st = o.latest("threadpool")
    if not st:
        return waiting("no hang sent to the thread pool yet")
    busy = users_in_flight(st)
    want = f"≥ {len(hangs)} busy for good: each hang takes a thread and nothing gives it back"
    text = f"{busy} of {st['counters'].get('pool_size', '?')} busy"
    if o.now - hangs[-1]["t"] < 12:
        return waiting("watch it for 12 s: longer than prefork's --timeout", text, want)
    return judged(busy >= len(hangs), busy, text, want,
                  "a hung thread came back: was the hang shorter than you think (?s=…), or the pool restarted?")


def loop_stalled(server: str) -> Callable[[Obs], Reading]:
    """A hung loop answers nobody, not even the tab's polls: silent for (nearly) the whole hang."""
    def read(o: Obs) -> Reading:
        hangs = o.faults_of(server, "hang", f"the {label(server)}")
        if isinstance(hangs, Reading):
            return hangs
        t, s = hangs[-1]["t"], _hang_seconds(hangs[-1])
        silence = o.silence_s(server, t)
        want = f"silent for its whole {s:g} s hang: nothing else runs on its one thread"
        text = f"no answer for {silence:.0f} s"
        if o.now < t + s + 2:
            return waiting(f"the hang lasts {s:g} s", text, want)
        # the polls are a second apart and each waits 1.5 s: the silence seen is the hang minus up to ~3 s
        return judged(silence >= min(s - 3, 0.75 * s), silence, text, want,
                      "it answered during the hang: was the hang sent to this server (see Act's outcome)?")
    return read


def _hang_seconds(event: dict[str, Any]) -> float:
    m = re.search(r"[?&]s=(\d+)", event.get("path", ""))
    return float(m.group(1)) if m else 3600.0


# -- exercise 3: leaks -------------------------------------------------------------------------------------------
def _leaked_mb(o: Obs, server: str) -> int:
    return sum(int(m.group(1)) for e in o.events_of(server, ["leak"])
               if (m := re.search(r"[?&]mb=(\d+)", e.get("path", ""))))


def leak_kept(o: Obs) -> Reading:
    leaks = o.faults_of("threadpool", "leak", "the thread pool")
    if isinstance(leaks, Reading):
        return leaks
    st = o.latest("threadpool")
    if not st:
        return waiting("nothing leaked into the thread pool yet")
    leaked = _leaked_mb(o, "threadpool")
    base = o.before("threadpool", leaks[0]["t"])
    grew = (o.memory("threadpool", stats=st) or 0) - (o.memory("threadpool", stats=base) or 0)
    return judged(grew >= 0.8 * leaked, grew, f"+{grew:.0f} MiB RSS",
                  f"+≈{leaked} MiB, kept: its one process holds every leak",
                  "it did not grow by what was leaked: was it restarted (an OOM kill in Docker)?")


def leak_per_worker(o: Obs) -> Reading:
    """Judged on the last sample before a worker died after the leaks (a recycle takes its leak with it)."""
    leaks = o.faults_of("prefork", "leak", "prefork")
    if isinstance(leaks, Reading):
        return leaks
    if not o.latest("prefork"):
        return waiting("nothing leaked into prefork yet")
    leaked = _leaked_mb(o, "prefork")
    died = [d.t for d in o.deaths("prefork") if d.t > leaks[0]["t"]]
    st = o.before("prefork", died[0]) if died else o.latest("prefork")
    before = o.process_memory("prefork", o.before("prefork", leaks[0]["t"]))
    now = o.process_memory("prefork", st)
    grew = {pid: rss - before[pid][1] for pid, (role, rss) in now.items() if pid in before and role == "worker"}
    master = sum(rss - before[pid][1] for pid, (role, rss) in now.items() if pid in before and role == "master")
    text = " · ".join(f"+{g:.0f}" for g in sorted(grew.values(), reverse=True)) + f" MiB; master +{master:.0f}"
    return judged(master < 5 and sum(grew.values()) >= 0.8 * leaked, grew, text,
                  f"≈{leaked} MiB in all, each worker only what it leaked, the master nothing",
                  "the workers did not grow by what was leaked, or the master grew")


def recycle_frees(o: Obs) -> Reading:
    res = o.result("recycle-fattest")
    if not res or "rss_before_mb" not in res.get("facts", {}):
        return waiting("recycle the fattest worker first")
    f = res["facts"]
    st = o.latest("prefork")
    now = o.memory("prefork", stats=st) or 0.0
    freed = f["rss_before_mb"] - now
    return judged(freed >= 0.8 * f["worker_grew_mb"], freed, f"−{freed:.0f} MiB",
                  f"−≈{f['worker_grew_mb']:.0f} MiB: what that worker had leaked goes with it",
                  "memory did not come back: did the master replace the worker? (Respawns)")


# -- exercise 4: CPU vs I/O --------------------------------------------------------------------------------------
def cores(key: str, server: str, cap: float | None) -> Callable[[Obs], Reading]:
    """CPU cores SERVER used during its CPU burst (the action KEY): at most CAP, or (None) more than one core."""
    def read(o: Obs) -> Reading:
        f = (o.result(key) or {}).get("facts", {})
        if "cores" not in f:
            return waiting("run its CPU burst")
        text = f"{f['cores']:.2f} cores ({f['cpu_s']:.1f} s of CPU in {f['wall_s']:.1f} s)"
        if cap is not None:
            return judged(f["cores"] <= cap, f["cores"], text, "at most 1 core: one thread runs Python at a time",
                          "above one core: is something else of this server's tree burning CPU?")
        free = f["machine_cores"] - f["others_cores"]
        want = "more than 1 core: its 4 workers compute in parallel"
        if f["cores"] > 1.2:
            return judged(True, f["cores"], text, want, "")
        if free < 1.6:
            return Reading(f["cores"], text, want, UNSURE, f"the machine had only {max(0.0, free):.1f} of its "
                           f"{f['machine_cores']} cores free (other programs used {f['others_cores']:.1f}): nothing "
                           "to run in parallel on — in Docker each server is capped at one core (cpus: 1.0)")
        return judged(False, f["cores"], text, want, f"{free:.1f} cores were free but the workers did not use them")
    return read


def bounded_rps(server: str, bound: float, what: str) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        _, rps = o.rate(server)
        if rps is None:
            return waiting("measuring over 5 s of load")
        return judged(rps <= bound * 1.05, rps, f"{rps:.0f} req/s", what,
                      "more than its workers can serve at this io ms: is the io ms what you set?")
    return read


def all_served_rps(server: str, floor: float, what: str) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        _, rps = o.rate(server)
        if rps is None:
            return waiting("measuring over 5 s of load")
        return judged(rps >= floor, rps, f"{rps:.0f} req/s", what,
                      "fewer than the users ask for: is Locust short of CPU (see its CPU warning), or were users "
                      "still starting?")
    return read


# -- exercise 5: the counter race --------------------------------------------------------------------------------
def counter_after(key: str, lost: bool) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        res = o.result(key)
        if not res or "value" not in res.get("facts", {}):
            return waiting("press the button (or run the command)")
        f = res["facts"]
        v, sent = f["value"], f["sent"]
        if lost:
            return judged(v <= 0.9 * sent, v, f"{v} of {sent}", f"fewer than {sent}: updates lost",
                          "almost nothing lost this time: were the increments concurrent (the -P of xargs)?")
        return judged(v == sent, v, f"{v} of {sent}", f"{sent}: the lock makes read-and-write one step",
                      "the locked counter lost updates: that would be a bug — tell us")
    return read


def counter_per_pid(o: Obs) -> Reading:
    res = o.result("counter-prefork")
    if not res or "per_pid" not in res.get("facts", {}):
        return waiting("press the button (or run the command)")
    f = res["facts"]
    per = f["per_pid"]
    text = " + ".join(f"{v}" for v in per.values()) + f" = {sum(per.values())} ({len(per)} pids)"
    return judged(sum(per.values()) == f["sent"] and len(per) >= 2, per, text,
                  f"one counter per worker pid, adding up to {f['sent']}: nothing lost (a sync worker runs one "
                  "request at a time), and no single count",
                  "the reads did not reach every worker (they take turns at the listener): press it again")


# -- exercise 6: memory as prefork grows --------------------------------------------------------------------------
def growth_per_worker(kind: str) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        seen = o.answered("prefork")
        if not seen:
            return waiting("no answer from prefork yet")
        base = seen[0][1]
        n0 = len(base.get("per_worker") or [])
        top = max(seen, key=lambda ts: len(ts[1].get("per_worker") or []))[1]
        added = len(top.get("per_worker") or []) - n0
        if added <= 0:
            return waiting("add workers first (scale prefork +4)")
        rss = ((o.memory("prefork", "rss", top) or 0) - (o.memory("prefork", "rss", base) or 0)) / added
        pss = ((o.memory("prefork", "pss", top) or 0) - (o.memory("prefork", "pss", base) or 0)) / added
        if kind == "rss":
            return Reading(rss, f"+{rss:.1f} MiB per worker", "a whole process per worker (its shared pages counted "
                           "again in each)", INFO)
        return judged(pss < 0.5 * rss, pss, f"+{pss:.1f} MiB per worker",
                      f"less than half the RSS growth ({rss:.1f}): a new worker shares the master's pages "
                      "copy-on-write", "the workers do not share much: did they touch (write) their memory?")
    return read


def workers_now(o: Obs) -> Reading:
    st = o.latest("prefork")
    if not st:
        return waiting("no answer from prefork yet")
    n = len(st.get("per_worker") or [])
    want = int(st.get("counters", {}).get("target_workers") or n)
    return judged(n == want, n, f"{n} workers", f"{want}: the master's target (4 in the lab, ± what you scaled)",
                  "the master has not reached its target yet: a removed worker first finishes what it holds")


# -- exercise 7: slow clients ------------------------------------------------------------------------------------
def normal_client(key: str, starved: bool) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        res = o.result(key)
        f = (res or {}).get("facts", {})
        if not f.get("sent"):
            return waiting("start the slow clients (the normal client starts a second later)")
        ok, sent, p50 = f["ok"], f["sent"], f.get("p50_ms")
        text = f"{ok}/{sent} answered" + (f", p50 {p50:.1f} ms" if p50 is not None else "")
        if sent < 8:
            return waiting("the normal client needs 8 tries (each waits up to 2 s)", text)
        share = ok / sent
        if starved:
            return judged(share <= 0.25, share, text, "almost none: every worker or thread is pinned by a trickler",
                          "the tricklers are not all connected yet, or the server cuts them (--header-timeout)")
        return judged(share >= 0.95 and (p50 or 0) < 50, share, text, "all of them, in a millisecond or two",
                      "the machine is very busy (p50), or the slow clients are not on this server")
    return read


# -- exercise G: green threads -----------------------------------------------------------------------------------
def waited_together(key: str) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        f = (o.result(key) or {}).get("facts", {})
        if "wall_s" not in f:
            return waiting("press the button (or run the command)")
        n, ms_, wall = f["n"], f["ms"], f["wall_s"]
        text = f"{n} × {ms_} ms in {wall:.2f} s ({f['overlap']:.1f} at once)"
        return judged(wall < n * ms_ / 1000 / 4, wall, text,
                      f"about {ms_ / 1000:g} s for all {n}, not {n * ms_ / 1000:g} s: the waits overlap",
                      "they waited one after another: is the process monkey-patched (its log says greenthreads)?")
    return read


def blocked_wait(key: str, stalls: bool) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        f = (o.result(key) or {}).get("facts", {})
        if "waited_ms" not in f:
            return waiting("press the button (or run the command)")
        waited, block = f["waited_ms"], f["ms"]
        text = f"`/` answered after {ms(waited)}"
        if stalls:
            return judged(waited >= 0.6 * (block - 300), waited, text,
                          f"≈ {(block - 300) / 1000:.1f} s: it waits until the C call returns, like everyone else",
                          "it was answered at once: did the blocking request reach this server first?")
        return judged(waited < 0.25 * block, waited, text, "in milliseconds: another OS thread answers",
                      "it waited: is every thread of the pool busy (load, a hang)? Reset, then try again")
    return read


# -- H3: who accepts ---------------------------------------------------------------------------------------------
def accept_split(o: Obs) -> Reading:
    res = o.result("fresh-connections")
    f = (res or {}).get("facts", {})
    if "accepted" not in f:
        return waiting("open the fresh connections first")
    shares = [n / max(1, sum(f["accepted"].values())) for n in f["accepted"].values()]
    text = " / ".join(f"{s:.0%}" for s in shares) + f" of {sum(f['accepted'].values())}"
    if f.get("reuseport"):
        return judged(all(0.4 <= s <= 0.6 for s in shares), shares, text,
                      "40–60 % each: the kernel hashes each connection to one worker's own socket",
                      "uneven even by hash: were the connections fewer than a few hundred?")
    return Reading(shares, text, "any split: whichever worker is awake first takes what is queued "
                                 "(add WEBMODELS_REUSEPORT=1 and restart to compare)", INFO)


# -- H1/H2: the hybrids ------------------------------------------------------------------------------------------
def kept_serving(server: str) -> Callable[[Obs], Reading]:
    """While one worker is hung, the others' users are still answered (when any users are on them)."""
    def read(o: Obs) -> Reading:
        hangs = o.faults_of(server, "hang", f"{label(server)}")
        if isinstance(hangs, Reading):
            return hangs
        t = hangs[-1]["t"]
        before = [st for ts, st in o.answered(server) if ts <= t]
        hung = _hung_worker(o, server, t)
        others = sum(n for pid, n in worker_split(before[-1]) if pid != hung) if before and hung else None
        answered = o.ok_between(server, t + 2, t + 7)
        if answered is None or hung is None:
            return waiting("watching for 7 s")
        if others == 0 and answered == 0:
            return judged(True, answered, f"{answered} answered",
                          "0: every user was on the hung worker (see the split) — it stalls them all, as the "
                          "event loop does", "")
        # (the split counts requests in flight: a user between two requests on the other worker shows as 0 there,
        # so answers after a split of "0 elsewhere" are that worker's users, as the lesson says — not a miss)
        return judged(answered > 0, answered, f"{answered} answered in 5 s",
                      f"> 0: the other worker's users are still served ({others} in flight there before the hang)",
                      "nothing answered: were all users on the hung worker? see per-worker in-flight")
    return read


def _hung_worker(o: Obs, server: str, after: float) -> int | None:
    """The worker whose loop lag or busy time shows the hang: the highest lag seen after AFTER."""
    lags = o.max_counter(server, "loop_lag_ms", after, per_worker=True)
    return max(lags, key=lambda p: lags[p]) if lags and max(lags.values()) >= 2000 else None


def one_worker_lags(server: str) -> Callable[[Obs], Reading]:
    def read(o: Obs) -> Reading:
        hangs = o.faults_of(server, "hang", f"{label(server)}")
        if isinstance(hangs, Reading):
            return hangs
        lags = o.max_counter(server, "loop_lag_ms", hangs[-1]["t"], per_worker=True)
        hung = _hung_worker(o, server, hangs[-1]["t"])
        if hung is None:
            return waiting("its lag climbs within a second or two", " · ".join(f"{v:,.0f}" for v in lags.values()))
        rest = [v for p, v in lags.items() if p != hung]
        text = f"worst {lags[hung]:,.0f} ms (pid {hung}); others ≤ {max(rest, default=0):,.0f} ms"
        return judged(max(rest, default=0) < 1000, lags[hung], text,
                      "one worker's lag climbs (to --timeout), the others stay near 0",
                      "another worker lagged too: is the machine overloaded?")
    return read



def hung_users(server: str) -> Callable[[Obs], Reading]:
    """Collateral of a hang = the users the hung worker held before the hang (the split just before it)."""
    def read(o: Obs) -> Reading:
        hangs = o.faults_of(server, "hang", label(server))
        if isinstance(hangs, Reading):
            return hangs
        deaths = [d for d in o.deaths(server) if d.t >= hangs[0]["t"]]
        if not deaths:
            return waiting(f"the hung {label(server)} worker has not been killed yet")
        if (r := o.settling(deaths[-1].t, server)) is not None:
            return r
        before = [st for ts, st in o.answered(server) if ts <= hangs[0]["t"]]
        split = dict(worker_split(before[-1])) if before else {}
        want = sum(split.get(d.pid, 0) for d in deaths)
        got = int(o.acc(server, "collateral"))
        return judged(abs(got - want) <= 1, got, str(got),
                      f"{want}: the users it held before the hang (" + " · ".join(map(str, split.values())) + ")",
                      "not what the hung worker held: did users move meanwhile, or time out twice?")
    return read


def _burst_cmd(server: str) -> str:
    """The shell version of a CPU burst: 40 requests of 50 ms CPU, 8 at a time, timed."""
    return (f"time (seq 40 | xargs -P 8 -I{{}} curl -s -o /dev/null "
            f"'http://127.0.0.1:{LAB_PORTS[server]}/cpu?ms=50')")


def _counter_cmd(server: str, mode: str, reads: int = 1) -> str:
    """The shell version of a counter action: reset, 200 increments 20 at a time, read (READS times: prefork,
    whose workers each keep their own counter and take turns answering — no single reset reaches them all)."""
    base = f"http://127.0.0.1:{LAB_PORTS[server]}/counter?mode={mode}"
    read = f"curl -s '{base}&op=read'"
    reset = f"curl -s '{base}&op=reset' >/dev/null; " if reads == 1 else ""
    if reads > 1:
        read = f"for i in $(seq {reads}); do {read}; echo; done"
    return f"{reset}seq 200 | xargs -P 20 -I{{}} curl -s -o /dev/null '{base}&window_ms=20'; {read}"


# -- the table -----------------------------------------------------------------------------------------------------
IO_LOAD = Setup(ALL, 6 * len(ALL), 6 * len(ALL), "io", {"io_ms": 200})  # 6 users per server
NO_LOAD = Setup()


def _curl(server: str, path: str, *flags: str) -> str:
    return " ".join(["curl", *flags, f"'http://127.0.0.1:{LAB_PORTS[server]}{path}'"])


EXERCISES: tuple[Exercise, ...] = (
    Exercise(
        "1", "Crash a worker vs crash the loop",
        "When the process serving a request dies, what happens to the other requests in flight — with a prefork "
        "worker, and with the event loop?",
        "fault isolation", (IO_LOAD,),
        (Action("kill-prefork-worker", "Kill one prefork worker", "kill", "prefork", "webmodels kill prefork --worker",
                {"target": "worker"}),
         Action("crash-eventloop", "Crash the event loop", "fault", "eventloop", _curl("eventloop", "/fault/crash"),
                {"kind": "crash"})),
        (Fig("prefork-collateral", "prefork: requests lost", "fault accounting: collateral",
             "1 per worker killed: the request it was serving (6 users keep 4 workers busy; 0 if it was between two)", sync_lost),
         Fig("prefork-respawn", "prefork: workers", "/_lab/stats per_worker",
             "back to 4 at once: the master respawns the dead worker", respawned("prefork")),
         Fig("prefork-downtime", "prefork: downtime", "fault accounting: downtime",
             "0 ms: the other workers never stop serving", short_downtime("prefork", 50, "0 ms: the others keep serving")),
         Fig("eventloop-collateral", "event loop: requests lost", "fault accounting: collateral",
             "every request in flight (its 6 users), then every one sent while it is down",
             lost_with_process("eventloop")),
         Fig("eventloop-downtime", "event loop: downtime", "fault accounting: downtime and back-off",
             "more than 0: down until its supervisor restarts it", down_until_restarted("eventloop"))),
        "Separate processes share nothing to die with; one process is one fate.",
        more="Or let Locust do it: *fault* = `crash`, *fault every* = 5 s. Then prefork's *collateral* is 0: the "
             "crash request itself is the casualty (counted as *expected*), and the worker that served it was "
             "serving nothing else.\n\n"
             "*Whose downtime?* `make up`'s supervisor copies Docker's restart back-off: wait 100 ms, doubling after "
             "every crash up to 1 min, reset after 10 s up. Crash every 6 s and the waits grow (… 1.6, 3.2, 6.4 s) "
             "while the model itself starts in about half a second — that is the supervisor's policy, not the "
             "model's cost (measured here over 45 s: longest downtime 3.5 s, of which 3.2 s back-off; with "
             "`--restart-delay 0.5`: 1.1 s, of which 0.5 s). The Servers tab says so (`down — restart in 6.4 s "
             "(back-off)`), the fault accounting has a *back-off ms* column (the part of the downtime spent "
             "waiting), and `webmodels up --restart-delay 0.5` restarts after a fixed 0.5 s so repeated crashes "
             "measure the model. Docker does the same back-off but keeps it to itself: there the row says `down` "
             "and the column `-`."),
    Exercise(
        "2", "Hang a worker, with and without --timeout",
        "A request hangs forever. Who notices, and what does the server lose until then: a prefork worker, a "
        "pool thread, the event loop?",
        "hung work", (Setup(("prefork", "eventloop"), 10, 10, "io", {"io_ms": 200}),),
        (Action("hang-prefork", "Hang one prefork worker", "fault", "prefork",
                _curl("prefork", "/fault/hang?s=3600", "-m", "2"), {"kind": "hang", "s": 3600},
                "curl gives up after 2 s, the worker stays hung until the master kills it"),
         Action("hang-threadpool", "Hang one thread of the thread pool", "fault", "threadpool",
                _curl("threadpool", "/fault/hang?s=3600", "-m", "2"), {"kind": "hang", "s": 3600}),
         Action("hang-eventloop", "Hang the event loop for 12 s", "fault", "eventloop",
                _curl("eventloop", "/fault/hang?s=12", "-m", "2"), {"kind": "hang", "s": 12})),
        (Fig("prefork-timeout", "prefork: hung workers killed", "/_lab/stats worker_exits (timeout) and the event log",
             "each one about 10 s after its hang (WEBMODELS_TIMEOUT=10 in lab/prefork.env), then replaced",
             hang_killed_by_timeout("prefork")),
         Fig("threadpool-busy", "thread pool: busy threads", "/_lab/stats busy_threads (the pool has no load here)",
             "one more per hang, for good: nothing kills a hung thread (a thread leak)", threads_lost),
         Fig("eventloop-stall", "event loop: during its hang", "the tab's polls of /_lab/stats",
             "silent for the whole hang: one hang stalls everything", loop_stalled("eventloop"))),
        "A master that watches its workers from outside can kill one that stopped answering; nothing can kill "
        "a thread, and nobody is left to notice when the one loop stops.",
        more="Run the prefork command a few times: each hung worker is replaced 10 s after its hang. Try "
             "`WEBMODELS_WATCHDOG=5` in `lab/eventloop.env` (restart the lab): the loop exits when stalled for 5 s "
             "and its supervisor restarts it."),
    Exercise(
        "3", "Leak to the limit",
        "Memory leaks a little per request. What grows, and what brings it back?",
        "leaks", (NO_LOAD,),
        (Action("leak-threadpool", "Leak 10 MiB × 20 into the thread pool", "leak", "threadpool",
                f"for i in $(seq 20); do {_curl('threadpool', '/fault/leak?mb=10', '-s')}; done", {"mb": 10, "n": 20}),
         Action("leak-prefork", "Leak 10 MiB × 20 into prefork", "leak", "prefork",
                f"for i in $(seq 20); do {_curl('prefork', '/fault/leak?mb=10', '-s')}; done", {"mb": 10, "n": 20}),
         Action("recycle-fattest", "Recycle prefork's fattest worker", "fattest", "prefork",
                "webmodels kill prefork --worker --pid PID",
                note="PID: the worker with the largest RSS in `webmodels status --json`; what --max-requests "
                     "does on a schedule")),
        (Fig("threadpool-rss", "thread pool: memory", "/_lab/stats RSS (process tree) and the event log",
             "grows by what was leaked (≈200 MiB) and keeps it", leak_kept),
         Fig("prefork-rss", "prefork: where the leak went", "/_lab/stats RSS per process",
             "≈200 MiB in all, each worker only what it leaked, the master nothing", leak_per_worker),
         Fig("prefork-recycled", "prefork: after recycling the fattest worker", "/_lab/stats RSS (process tree)",
             "that worker's leak is gone with it", recycle_frees)),
        "A leak stays in the process that leaked. One process keeps everything until its limit (in Docker, "
        "`mem_limit: 512m`: the thread pool is OOM-killed at about 50 leaks and restarted, and everything in flight "
        "fails); a master can recycle workers and bound it.",
        more="In the lab, add `WEBMODELS_MAX_REQUESTS=200` to `lab/prefork.env` and restart: workers recycle "
             "before a leak matters. Natively there is no memory limit: run the thread-pool command a few more "
             "times to see it grow; in Docker it is killed at 512 MiB."),
    Exercise(
        "4", "CPU-bound vs I/O-bound",
        "Requests that compute and requests that wait: which model uses the cores, which serves the most users?",
        "multi-core / the GIL",
        (Setup(name="cpu"), Setup(("threadpool", "prefork", "eventloop"), 30, 30, "io", {"io_ms": 100}, name="io")),
        (Action("cpu-threadpool", "CPU burst on the thread pool", "cpu", "threadpool", _burst_cmd("threadpool")),
         Action("cpu-prefork", "CPU burst on prefork", "cpu", "prefork", _burst_cmd("prefork")),
         Action("cpu-eventloop", "CPU burst on the event loop", "cpu", "eventloop", _burst_cmd("eventloop"))),
        (Fig("threadpool-cores", "cpu: thread pool's CPU", "/_lab/stats cpu_seconds (process tree) over its burst",
             "at most 1 core: one thread runs Python at a time (the GIL)", cores("cpu-threadpool", "threadpool", 1.1)),
         Fig("prefork-cores", "cpu: prefork's CPU", "/_lab/stats cpu_seconds (process tree) over its burst",
             "more than 1 core when the machine has two cores free: 4 processes compute in parallel (on a busy machine, or in "
             "Docker with one core per server, the tab says it cannot tell)",
             cores("cpu-prefork", "prefork", None)),
         Fig("eventloop-cores", "cpu: event loop's CPU", "/_lab/stats cpu_seconds (process tree) over its burst",
             "at most 1 core: one thread, one request at a time", cores("cpu-eventloop", "eventloop", 1.1)),
         Fig("prefork-io", "io: prefork's throughput", "/_lab/stats requests, last 5 s",
             "at most 40 req/s: 4 workers × 1 request per 100 ms", bounded_rps("prefork", 40, "≤ 40 req/s: its 4 "
                                                                              "workers, one request each"), "io"),
         Fig("eventloop-io", "io: event loop's throughput", "/_lab/stats requests, last 5 s",
             "≈ 100 req/s: all 10 users wait at once", all_served_rps("eventloop", 70, "≈ 100 req/s: all 10 users "
                                                                      "wait at once"), "io"),
         Fig("threadpool-io", "io: thread pool's throughput", "/_lab/stats requests, last 5 s",
             "≈ 100 req/s: 10 users, 32 threads", all_served_rps("threadpool", 70, "≈ 100 req/s: 10 users fit in "
                                                                  "its 32 threads"), "io")),
        "CPU work holds the GIL: threads of one process take turns; processes run in parallel. Waiting costs "
        "a thread or a worker each in the blocking models and almost nothing in the loop.",
        more="On `cpu` the event loop serializes everything (load it alone and watch its `/` latency); on `io` it "
             "serves the most users per MiB. In Docker every server gets one core (`cpus: 1.0`, see *CPU limits* "
             "above): there prefork cannot exceed one core either."),
    Exercise(
        "5", "The unsafe counter",
        "Twenty clients increment one counter at once, 200 times in all. Does it count every increment?",
        "races", (NO_LOAD,),
        (Action("counter-threadpool", "200 unsafe increments to the thread pool", "counter", "threadpool",
                _counter_cmd("threadpool", "unsafe"), {"mode": "unsafe"}),
         Action("counter-threadpool-locked", "200 locked increments to the thread pool", "counter", "threadpool",
                _counter_cmd("threadpool", "locked"), {"mode": "locked"}),
         Action("counter-eventloop", "200 unsafe increments to the event loop", "counter", "eventloop",
                _counter_cmd("eventloop", "unsafe"), {"mode": "unsafe"}),
         Action("counter-prefork", "200 unsafe increments to prefork", "counter", "prefork",
                _counter_cmd("prefork", "unsafe", reads=8), {"mode": "unsafe"}, "reads the counter 8 times: the workers take turns, each answers with its own")),
        (Fig("threadpool-unsafe", "thread pool, unsafe: the counter", "GET /counter?op=read after the increments",
             "fewer than 200: two threads read the same value and both write it + 1",
             counter_after("counter-threadpool", lost=True)),
         Fig("threadpool-locked", "thread pool, locked: the counter", "GET /counter?op=read after the increments",
             "exactly 200", counter_after("counter-threadpool-locked", lost=False)),
         Fig("eventloop-unsafe", "event loop, unsafe: the counter", "GET /counter?op=read after the increments",
             "fewer than 200 too: the handler awaits between reading and writing", counter_after("counter-eventloop",
                                                                                                  lost=True)),
         Fig("prefork-unsafe", "prefork: the counters", "GET /counter?op=read, before and after, from each worker",
             "one counter per worker pid, adding up to 200", counter_per_pid)),
        "Threads share the counter and lose updates between reading and writing it; a lock makes the two one "
        "step. The event loop loses them too when the handler awaits in between. Processes share nothing: no "
        "race, and no single count either.",
        more="The increments ask for a 20 ms window between the read and the write (`window_ms=20`) so that "
             "twenty at once overlap on any machine; with the default 1 ms fewer are lost. Locust's workload "
             "`counter` runs the same race under load, unsafe and locked side by side."),
    Exercise(
        "6", "RSS vs PSS as prefork grows",
        "Four more workers: how much memory does each one cost — as `ps` (RSS) says, and really (PSS)?",
        "resource usage", (NO_LOAD,),
        (Action("scale-up", "Add 4 prefork workers", "scale", "prefork", "webmodels scale prefork +4", {"delta": 4},
                "natively `kill -TTIN <master pid>` does the same; in Docker use the command (docker-init does not "
                "forward SIGTTIN)"),
         Action("scale-down", "Remove 4 prefork workers", "scale", "prefork", "webmodels scale prefork -4",
                {"delta": -4})),
        (Fig("workers", "prefork: workers", "/_lab/stats per_worker", "8 after +4, 4 again after −4", workers_now),
         Fig("rss-per-worker", "RSS per added worker", "/_lab/stats RSS (process tree)",
             "a whole process each (about 20 MiB here): shared pages counted again in every process", growth_per_worker("rss")),
         Fig("pss-per-worker", "PSS per added worker", "/_lab/stats PSS (process tree)",
             "less than half of that: a new worker shares the master's pages copy-on-write",
             growth_per_worker("pss"))),
        "RSS counts every shared page once per process and overstates prefork; PSS splits shared pages between "
        "their sharers and adds up to the truth. `webmodels status` shows both.",
        more="`webmodels status` before and after shows the same per server: RSS, USS (only this process's "
             "pages) and PSS."),
    Exercise(
        "7", "Slow clients (slowloris)",
        "A hundred clients send their request head one byte a second. Can anyone else get in?",
        "slow clients", (NO_LOAD,),
        (Action("slow-prefork", "Start 100 slow clients on prefork", "slow", "prefork",
                ".venv/bin/python benchmarks/slowloris.py --url http://127.0.0.1:8002", {"clients": 100}),
         Action("slow-threadpool", "Start 100 slow clients on the thread pool", "slow", "threadpool",
                ".venv/bin/python benchmarks/slowloris.py --url http://127.0.0.1:8001", {"clients": 100}),
         Action("slow-hybrid-loop", "Start 100 slow clients on hybrid-loop", "slow", "hybrid-loop",
                ".venv/bin/python benchmarks/slowloris.py --url http://127.0.0.1:8005", {"clients": 100}),
         Action("slow-stop", "Stop the slow clients", "slow", "", "Ctrl-C (the script stops by itself after 10 s)",
                {"stop": True})),
        (Fig("prefork-normal", "prefork: the normal client", "the tab's normal client: GET / on a fresh connection "
             "every 100 ms, 2 s timeout", "almost nothing answered: 4 workers, each pinned by a trickler",
             normal_client("slow-prefork", starved=True)),
         Fig("threadpool-normal", "thread pool: the normal client", "the tab's normal client",
             "almost nothing answered: 32 threads pinned, then its queue full (503)",
             normal_client("slow-threadpool", starved=True)),
         Fig("hybrid-loop-normal", "hybrid-loop: the normal client", "the tab's normal client",
             "all of them, in a millisecond or two: a trickler costs the loop a few hundred bytes",
             normal_client("slow-hybrid-loop", starved=False))),
        "Whatever serves a connection from its first byte is held by a client that never finishes its head: a "
        "sync worker, a pool thread. That is why Apache and gunicorn's sync workers sit behind a buffering proxy "
        "(nginx), which is itself an event loop.",
        more="The defences a server can switch on: `--header-timeout S` (the whole head must arrive within S), "
             "`--min-rate BYTES_PER_S` (as Apache's mod_reqtimeout: each byte earns 1/rate s more, up to S after "
             "the last byte, so a big upload at a decent rate may outlast `--header-timeout` while a trickler never "
             "does), and an engine that waits cheaply (`--engine loop`). `--min-rate` only ever *lengthens* a "
             "deadline: alone it cuts a 1 B/s trickler at about `--header-timeout` (10 s by default: 10.1 s with "
             "`--min-rate 100`), so `.venv/bin/python benchmarks/slowloris.py --server eventloop --flags "
             "\"--min-rate 100\"` cuts **0** of the 100 tricklers in its 10 s run (and 100 by 20 s: `--seconds "
             "20`). Lower `--header-timeout` to cut them sooner: `--flags \"--header-timeout 2\"` cuts 200 in the "
             "same 10 s, with or without `--min-rate 100`. On prefork (4 workers) either way only 16: a worker "
             "accepts one connection at a time, and the other tricklers wait in the backlog, where no deadline "
             "runs. On a sync worker a timeout only rotates the victims: reconnecting tricklers queue ahead of the "
             "normal client. Without `--url` the script starts its own servers (`--server`, `--flags`); `webmodels "
             "bench --scenarios slow` measures every model."),
    Exercise(
        "G", "Green threads: blocking code that does not block — until it does",
        "The green-threads server runs the thread pool's blocking handler in one OS thread. Do its requests wait "
        "together as if each had a thread — and what happens when one blocks where gevent cannot see?",
        "who schedules", (NO_LOAD,),
        (Action("together-greenthreads", "20 waits of 0.5 s at once on green threads", "together", "greenthreads",
                "time (seq 20 | xargs -P 20 -I{} curl -s -o /dev/null 'http://127.0.0.1:8006/io?ms=500')",
                {"n": 20, "ms": 500}),
         Action("cblock-greenthreads", "Block green threads in C for 2 s", "cblock", "greenthreads",
                "curl -s 'http://127.0.0.1:8006/io-in-c?ms=2000' & sleep 0.3; "
                "curl -s -o /dev/null -w '%{time_total} s\n' http://127.0.0.1:8006/", {"ms": 2000},
                "prints how long `/` waited; /io-in-c sleeps inside C (ctypes), where no monkey-patch reaches"),
         Action("cblock-threadpool", "Block the thread pool in C for 2 s", "cblock", "threadpool",
                "curl -s 'http://127.0.0.1:8001/io-in-c?ms=2000' & sleep 0.3; "
                "curl -s -o /dev/null -w '%{time_total} s\n' http://127.0.0.1:8001/", {"ms": 2000}),
         Action("cblock-eventloop", "Block the event loop in C for 2 s", "cblock", "eventloop",
                "curl -s 'http://127.0.0.1:8003/io-in-c?ms=2000' & sleep 0.3; "
                "curl -s -o /dev/null -w '%{time_total} s\n' http://127.0.0.1:8003/", {"ms": 2000})),
        (Fig("greenthreads-together", "green threads: 20 waits of 0.5 s", "the action's own clock",
             "about 0.5 s for all 20: blocking code, yet the waits overlap", waited_together("together-greenthreads")),
         Fig("greenthreads-cblock", "green threads: `/` during a 2 s call in C", "the action's own clock",
             "≈ 1.7 s: the hub is blocked, every greenlet waits", blocked_wait("cblock-greenthreads", True)),
         Fig("threadpool-cblock", "thread pool: `/` during a 2 s call in C", "the action's own clock",
             "milliseconds: the kernel runs another thread", blocked_wait("cblock-threadpool", False)),
         Fig("eventloop-cblock", "event loop: `/` during a 2 s call in C", "the action's own clock",
             "≈ 1.7 s: one thread, blocked", blocked_wait("cblock-eventloop", True))),
        "gevent's monkey-patching turns every blocking call of the standard library (socket, select, time.sleep, "
        "threading) into a switch to another greenlet: the code of threads, the waiting of an event loop, one OS "
        "thread whose switches the kernel never sees. A call that blocks inside C — a C library, a driver that "
        "talks to its socket itself, a long computation — never reaches a patched function: the one thread "
        "stops, and every greenlet with it. The thread pool does not care: the kernel schedules its other "
        "threads (ctypes releases the GIL around the call).",
        more="`/cpu?ms=1000` does the same to green threads (Python code that never yields): watch the Servers tab's "
             "hub lag. Under a master, `webmodels serve prefork --engine gevent` (gunicorn `-k gevent -w N`) kills a "
             "worker whose hub stays blocked longer than `--timeout`."),
    Exercise(
        "H1", "Crash one worker of hybrid-threads",
        "A hybrid's worker dies with its threads' requests. How much does that cost compared with the thread pool, "
        "which is one process?",
        "fault isolation", (IO_LOAD,),
        (Action("kill-hybrid-threads-worker", "Kill one hybrid-threads worker", "kill", "hybrid-threads",
                "webmodels kill hybrid-threads --worker", {"target": "worker"},
                f"a worker at random; or `{_curl('hybrid-threads', '/fault/crash')}`, which crashes "
                "the worker serving it"),
         Action("kill-busiest-hybrid-threads-worker", "Kill the busiest hybrid-threads worker", "kill",
                "hybrid-threads", "webmodels kill hybrid-threads --worker --pid busiest", {"target": "worker", "pid": "busiest"},
                "busiest: the worker with the most requests in flight at the kill, as the split below shows — the "
                "most this crash can cost"),
         Action("crash-threadpool", "Crash the thread pool", "fault", "threadpool", _curl("threadpool", "/fault/crash"),
                {"kind": "crash"})),
        (Fig("hybrid-threads-split", "hybrid-threads: requests in flight per worker", "/_lab/stats per_worker",
             "any split: keep-alive users stay with the worker that accepted them", split_now("hybrid-threads")),
         Fig("hybrid-threads-collateral", "hybrid-threads: requests lost", "fault accounting: collateral",
             "exactly what the killed worker had in flight, as the split showed just before",
             lost_with_worker("hybrid-threads")),
         Fig("hybrid-threads-downtime", "hybrid-threads: downtime", "fault accounting: downtime",
             "under 100 ms: a burst of failures at the kill, no outage — the other worker and the respawned one "
             "serve on", short_downtime("hybrid-threads", 100, "under 100 ms: no outage")),
         Fig("threadpool-collateral", "thread pool: requests lost", "fault accounting: collateral",
             "every request in flight (its 6 users), then every one sent while it is down",
             lost_with_process("threadpool")),
         Fig("threadpool-downtime", "thread pool: downtime", "fault accounting: downtime and back-off",
             "more than 0: down until restarted", down_until_restarted("threadpool"))),
        "The blast radius of a crash is the process: a hybrid's worker holds 1/N of the connections on average, "
        "but the keep-alive users stay where they were accepted, so the split you see is the split you lose.",
        more="Locust can repeat it: *fault* `kill-worker` (master models only) or `crash`.",
        section="hybrids"),
    Exercise(
        "H2", "Hang one hybrid-loop worker",
        "One worker's event loop blocks. Who stalls: everyone, as on the event loop, or only that worker's "
        "connections — and for how long?",
        "hung work", (IO_LOAD,),
        (Action("hang-hybrid-loop", "Hang one hybrid-loop worker", "fault", "hybrid-loop",
                _curl("hybrid-loop", "/fault/hang?s=3600", "-m", "2"), {"kind": "hang", "s": 3600},
                "curl gives up after 2 s, the worker stays hung until the master kills it"),
         Action("hang-eventloop", "Hang the event loop for 12 s", "fault", "eventloop",
                _curl("eventloop", "/fault/hang?s=12", "-m", "2"), {"kind": "hang", "s": 12})),
        (Fig("hybrid-loop-split", "hybrid-loop: requests in flight per worker", "/_lab/stats per_worker",
             "any split: keep-alive users stay with the worker that accepted them", split_now("hybrid-loop")),
         Fig("hybrid-loop-lag", "hybrid-loop: loop lag per worker", "/_lab/stats per_worker loop_lag_ms",
             "one worker's lag climbs, the other's stays near 0", one_worker_lags("hybrid-loop")),
         Fig("hybrid-loop-served", "hybrid-loop: answered during the hang", "fault accounting: ok",
             "the other worker's users are still served (none if every user was on the hung worker)",
             kept_serving("hybrid-loop")),
         Fig("hybrid-loop-timeout", "hybrid-loop: the hung worker", "/_lab/stats worker_exits (timeout)",
             "killed 10 s after the hang (--timeout) and replaced", hang_killed_by_timeout("hybrid-loop")),
         Fig("hybrid-loop-collateral", "hybrid-loop: requests lost", "fault accounting: collateral",
             "exactly the hung worker's users, as the split showed before the hang", hung_users("hybrid-loop")),
         Fig("eventloop-stall", "event loop: during its hang", "the tab's polls of /_lab/stats",
             "silent for the whole 12 s: everyone stalls", loop_stalled("eventloop"))),
        "A hung loop serves nobody; in a hybrid that is one worker's connections, until the master notices from "
        "outside (its heartbeat stops) and replaces it.",
        more="Locust's /io p99 for hybrid-loop jumps, its median doesn't.",
        section="hybrids"),
    Exercise(
        "H3", "Who accepts: a shared listener vs --reuseport",
        "Two workers wait for the same connections. Which one gets each?",
        "many idle connections", (NO_LOAD,),
        (Action("fresh-connections", "Open 2,000 fresh connections from 16 clients", "connect", "hybrid-loop",
                "seq 2000 | xargs -P 16 -I{} curl -s -o /dev/null http://127.0.0.1:8005/", {"n": 2000, "clients": 16}),),
        (Fig("accept-split", "hybrid-loop: connections accepted per worker", "/_lab/stats per_worker accepted, "
             "before and after", "shared listener: any split; with --reuseport 40–60 % each", accept_split),),
        "With one shared listener the workers compete for each connection and whichever is awake first takes "
        "what is queued; with `SO_REUSEPORT` each worker has its own socket and the kernel spreads connections by "
        "hash — evenly, but blind to load: a connection hashed to a hung worker waits for it (H2 again), one hashed "
        "to a recycling worker waits for its replacement to boot. The master keeps every worker's listener open, so "
        "a recycle, a SIGHUP, a crash or a kill loses nothing queued; only a worker fewer (`webmodels scale "
        "hybrid-loop -1`) closes one — it drains it first, and Linux's `net.ipv4.tcp_migrate_req=1` hands even the "
        "last microseconds' arrivals to a sibling. The start-up line and `/_lab/stats` (`counters.reuseport`) say "
        "which applies.",
        more="Read each worker's `accepted` yourself: `curl -s http://127.0.0.1:8005/_lab/stats | python3 -c 'import "
             "json,sys; print([(w[\"pid\"], w[\"accepted\"]) for w in json.load(sys.stdin)[\"per_worker\"]])'`. "
             "Add `WEBMODELS_REUSEPORT=1` to `lab/hybrid-loop.env` and restart the lab to compare (measured here, "
             "2,000 fresh connections from 16 clients: 41 % / 59 % shared, 48 % / 52 % with reuseport). To close "
             "the scale-down window natively: `sudo sysctl -w net.ipv4.tcp_migrate_req=1` (per network namespace, "
             "root); `docker compose up` sets it in the master models' own namespaces (docker-compose.override.yml) "
             "— not under CI's host network, which is the host's namespace. Measured: benchmarks/README.md, "
             "\"The --reuseport window\" (0 established connections lost across recycles, HUPs and scale-downs).",
        section="hybrids"),
)


BY_ID = {e.id: e for e in EXERCISES}
_PORT = re.compile(r"127\.0\.0\.1:(\d{4})\b")
_CLI = re.compile(r"\bwebmodels (kill|scale|status)\b([^;&|)]*)")


def localize(command: str, urls: Mapping[str, str]) -> str:
    """COMMAND for the lab whose servers answer at URLS: 127.0.0.1 ports shifted, `--port-offset` added.

    Lab URLs on another host (Locust in compose sees http://prefork:8002) leave the command as it is: the
    attendee types it on the host, where the published ports are the lab's.
    """
    shift = {}
    for name, url in urls.items():
        m = re.fullmatch(r"http://(?:127\.0\.0\.1|localhost):(\d+)/?", url)
        if m and name in LAB_PORTS:
            shift[LAB_PORTS[name]] = int(m.group(1))
    if not shift:
        return command
    offsets = {new - old for old, new in shift.items()}
    command = _PORT.sub(lambda m: f"127.0.0.1:{shift.get(int(m.group(1)), int(m.group(1)))}", command)
    if len(offsets) == 1 and (offset := offsets.pop()):
        command = _CLI.sub(lambda m: f"webmodels {m.group(1)}{m.group(2).rstrip()} --port-offset {offset}", command)
    return command


def exercise(ex_id: str) -> Exercise:
    try:
        return BY_ID[ex_id]
    except KeyError:
        raise KeyError(f"no exercise {ex_id!r} (there are {', '.join(BY_ID)})") from None


# -- the README ----------------------------------------------------------------------------------------------------
README = project_root() / "README.md"
WRITE = "python -m webmodels.exercises --write-readme"
MARKERS = {section: (f"<!-- {section}: generated from src/webmodels/exercises.py ({WRITE}); edit the table, not "
                     "this -->", f"<!-- {section}: end of generated part -->")
           for section in ("exercises", "hybrids")}


WIDTH = 115  # the README's line length


def _wrap(text: str, first: str, pad: str) -> list[str]:
    """TEXT wrapped at the README's width, never inside a `code span` (a command stays on one line)."""
    glued = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", "\0"), text)
    lines = textwrap.wrap(glued, WIDTH, initial_indent=first, subsequent_indent=pad, break_long_words=False,
                          break_on_hyphens=False)
    return [line.replace("\0", " ") for line in lines]


def render_one(e: Exercise) -> str:
    """One exercise as README markdown: a numbered item (1–7) or a bullet (H1–H3), with its parts."""
    head, pad = (f"{e.id}. ", "   ") if e.id.isdigit() else ("- ", "  ")
    title = f"**{e.title}.**" if e.id.isdigit() else f"**{e.id}. {e.title}.**"
    lines = _wrap(f"{title} {e.question} (Row: *{e.row}*.)", head, pad)
    setups = "; then ".join((f"*{s.name}* — " if s.name else "") + s.describe() + (f" ({s.by_hand})" if s.by_hand else "")
                            for s in e.setups)
    lines += _wrap(f"*Set up:* {setups}.", pad, pad)
    if e.actions:
        lines.append(f"{pad}*Act* (a button each in the tab, or in a shell):")
    for a in e.actions:
        note = f" ({a.note})" if a.note else ""
        if len(a.command) <= 80 and not a.command.startswith("Ctrl-C"):
            lines += _wrap(f"- **{a.label}**: `{a.command}`{note}", pad, pad + "  ")
        elif a.command.startswith("Ctrl-C"):
            lines += _wrap(f"- **{a.label}**: {a.command}{note}", pad, pad + "  ")
        else:  # a long one: a block, to copy as it is
            lines += _wrap(f"- **{a.label}**{note}:", pad, pad + "  ")
            lines += [f"{pad}  ```sh", f"{pad}  {a.command}", f"{pad}  ```"]
    lines.append(f"{pad}*Observe:*")
    for f in e.figures:
        lines += _wrap(f"- **{f.label}**: {f.predicts}. *Source: {f.source}.*", pad, pad + "  ")
    lines += _wrap(f"*Why:* {e.why}", pad, pad)
    for para in e.more.split("\n\n") if e.more else []:
        lines += [""] + _wrap(para, pad, pad)
    return "\n".join(lines)


def render(section: str) -> str:
    return "\n\n".join(render_one(e) for e in EXERCISES if e.section == section)


def with_generated(text: str) -> str:
    """TEXT (the README) with every generated section replaced by what the table says now."""
    for section, (begin, end) in MARKERS.items():
        pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"README has no generated {section} section (markers {begin!r} … {end!r})")
        text = pattern.sub(lambda _m: f"{begin}\n{render(section)}\n{end}", text, count=1)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m webmodels.exercises", description="The lab's exercises table.")
    ap.add_argument("--write-readme", action="store_true", help="rewrite the README's generated sections")
    ap.add_argument("--check-readme", action="store_true", help="fail if the README's generated sections drifted")
    args = ap.parse_args(argv)
    if args.write_readme or args.check_readme:
        text = README.read_text()
        new = with_generated(text)
    if args.write_readme:
        if new != text:
            README.write_text(new)
        print(f"{README}: {'rewritten' if new != text else 'already up to date'}")
        return 0
    if args.check_readme:
        if new != text:
            print(f"{README}: the generated exercise sections differ from the table; run: {WRITE}", file=sys.stderr)
            return 1
        return 0
    for e in EXERCISES:
        print(f"{e.id:3} {e.title}  [{e.row}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
