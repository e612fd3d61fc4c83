"""What an exercise observes: readings and verdicts computed from what the lab already shows.

The Exercises tab keeps, while an exercise is active, a sample of every lab server's /_lab/stats per second
(the same route the Servers tab polls: counters, per_worker, processes, totals), the live fault accounting
of the Locust run (ok / expected / collateral, downtime, back-off), the lab's event log (webmodels.events:
every fault and kill, whoever started it) and the outcomes of the actions it ran. `Obs` wraps that plain
data and answers the questions the exercises ask of it: which worker died and what it held in flight just
before, how many requests a server answered between two moments, how far a counter moved. A figure is a
small function Obs → Reading; its verdict says whether what happened is what the lesson predicts.

Plain data in, plain data out, no I/O: the tab calls it in Locust's process, the tests call it on the JSON
the tab serves and on hand-made observations, and the README's prose is checked against the same table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

# A figure's verdict: what happened is what the lesson predicts (OK), or not (DIFFERS, with the likely
# reason); too early to tell (WAITING: the action has not happened, or its effect takes time); nothing to
# judge (INFO: context such as the per-worker split); cannot tell here (UNSURE: no event log, a busy machine).
OK, DIFFERS, WAITING, INFO, UNSURE = "ok", "differs", "waiting", "info", "unsure"
MIB = 1024 * 1024
# Locust's processes report their requests once a second (and a busy machine is late): a figure read from the
# fault accounting waits this long after what it judges before it gives a verdict.
ACCOUNTING_LAG_S = 3.0


@dataclass
class Reading:
    """One figure, now: its value for people and programs, what the lesson predicts, and the verdict."""

    value: Any
    text: str
    predicted: str
    verdict: str
    reason: str = ""  # the likely reason, when the verdict is DIFFERS (or why it is WAITING / UNSURE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def waiting(why: str, text: str = "–", predicted: str = "") -> Reading:
    return Reading(None, text, predicted, WAITING, why)


def judged(ok: bool, value: Any, text: str, predicted: str, reason: str) -> Reading:
    """A reading whose verdict is OK when OK holds, DIFFERS (with REASON) otherwise."""
    return Reading(value, text, predicted, OK if ok else DIFFERS, "" if ok else reason)


@dataclass
class Death:
    """A process of a server that died: a worker (master models) or the server itself, and what it held."""

    pid: int
    t: float  # the first sample that no longer saw it (within one poll of the death)
    in_flight: int | None  # user requests it had in flight at the last sample before (None: never seen up)


def users_in_flight(stats: dict[str, Any], pid: int | None = None) -> int:
    """Requests in flight (of worker PID, or of the whole server), not counting the /_lab/stats request itself."""
    answered_by = stats.get("answered_by")
    if pid is None:
        return max(0, int(stats.get("counters", {}).get("in_flight", 0)) - 1)
    for w in stats.get("per_worker") or []:
        if w.get("pid") == pid:
            return max(0, int(w.get("in_flight") or 0) - (1 if pid == answered_by else 0))
    return 0


def worker_split(stats: dict[str, Any] | None) -> list[tuple[int, int]]:
    """(pid, requests in flight) per worker, in the board's order."""
    if not stats:
        return []
    return [(w["pid"], users_in_flight(stats, w["pid"])) for w in stats.get("per_worker") or []]


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f} ms"


class Obs:
    """One observation of the lab since an exercise was set up (or the lab reset): see the module docstring.

    DOC: {"now", "since", "samples": [{"t", "servers": {name: {"state", "stats"}}, "acc": {name: {...}}}],
    "acc": {name: summary}, "events": [event], "results": {action key: outcome dict}, "where"}.
    """

    def __init__(self, doc: dict[str, Any]) -> None:
        self.now: float = doc.get("now", 0.0)
        self.since: float = doc.get("since", 0.0)
        self.samples: list[dict[str, Any]] = doc.get("samples") or []
        self.acc_now: dict[str, dict[str, Any]] = doc.get("acc") or {}
        self.events: list[dict[str, Any]] = doc.get("events") or []
        self.results: dict[str, dict[str, Any]] = doc.get("results") or {}
        self.where: str = doc.get("where", "")
        self.setup: str = doc.get("setup", "")  # the name of the Setup last pressed (exercises with several)
        self.has_events: bool = doc.get("has_events", bool(self.events))

    # -- the servers' own figures --------------------------------------------------------------------------------
    def answered(self, server: str, before: float | None = None) -> list[tuple[float, dict[str, Any]]]:
        """(t, stats) of every sample in which SERVER answered (before time BEFORE)."""
        out = []
        for s in self.samples:
            if before is not None and s["t"] >= before:
                break
            st = (s["servers"].get(server) or {}).get("stats")
            if st:
                out.append((s["t"], st))
        return out

    def latest(self, server: str) -> dict[str, Any] | None:
        seen = self.answered(server)
        return seen[-1][1] if seen else None

    def first(self, server: str) -> dict[str, Any] | None:
        seen = self.answered(server)
        return seen[0][1] if seen else None

    def before(self, server: str, t: float) -> dict[str, Any] | None:
        """SERVER's stats in the last sample taken before T (the first one if none is older)."""
        seen = self.answered(server)
        older = [st for ts, st in seen if ts < t]
        return older[-1] if older else (seen[0][1] if seen else None)

    def state(self, server: str) -> str:
        """up / no answer / down, as the last sample saw it ("" before any sample)."""
        return (self.samples[-1]["servers"].get(server) or {}).get("state", "") if self.samples else ""

    def counter(self, server: str, key: str, stats: dict[str, Any] | None = None) -> Any:
        st = stats if stats is not None else self.latest(server)
        return (st or {}).get("counters", {}).get(key)

    def exits(self, server: str, reason: str) -> int:
        """Worker exits of REASON (timeout, signal, crash, recycled…) counted by a master since the start."""
        first, last = self.first(server), self.latest(server)
        if not first or not last or first.get("pid") != last.get("pid"):
            return 0
        get = lambda st: int((st.get("counters", {}).get("worker_exits") or {}).get(reason, 0))  # noqa: E731
        return get(last) - get(first)

    def deaths(self, server: str) -> list[Death]:
        """The workers (a master model) or the server processes (the others) that died since the start."""
        seen = self.answered(server)
        out: list[Death] = []
        master = any(st.get("per_worker") and any(w["pid"] != st.get("pid") for w in st["per_worker"])
                     for _, st in seen)
        at_kill = self.held_at_kill(server) if master else {}  # once, not per pair of samples
        for (_, a), (tb, b) in zip(seen, seen[1:]):
            if master:
                now = {w["pid"] for w in b.get("per_worker") or []}
                out += [Death(w["pid"], tb, at_kill.get(w["pid"], users_in_flight(a, w["pid"])))
                        for w in a.get("per_worker") or [] if w["pid"] not in now]
            elif a.get("started_at") != b.get("started_at"):
                out.append(Death(int(a.get("pid") or 0), self._first_silence(server, tb), users_in_flight(a)))
        if not master and seen and self.state(server) == "down":  # died, not answering yet
            out.append(Death(int(seen[-1][1].get("pid") or 0), self._first_silence(server, self.now),
                             users_in_flight(seen[-1][1])))
        return out

    def held_at_kill(self, server: str) -> dict[int, int]:
        """{pid: user requests in flight} of the workers killed by `webmodels kill` (or a tab button), read just
        before the SIGKILL (the event records it): closer to the kill than the tab's last sample, up to a second
        older, in which a busy worker's count can have moved by one or two."""
        return {int(e["pid"]): int(e["in_flight"]) for e in self.events_of(server, ["kill"])
                if e.get("in_flight") is not None}

    def split_at_kill(self, server: str) -> tuple[float, list[tuple[int, int]]] | None:
        """(when, the (pid, in flight) split) read just before the first worker kill since the start (None: none)."""
        kills = [e for e in self.events_of(server, ["kill"]) if e.get("split")]
        return (kills[0]["t"], [(int(p), int(n)) for p, n in kills[0]["split"]]) if kills else None

    def _first_silence(self, server: str, until: float) -> float:
        """When SERVER first stopped answering in the stretch of silence that ends at UNTIL."""
        t = until
        for s in reversed([s for s in self.samples if s["t"] < until]):
            if (s["servers"].get(server) or {}).get("stats"):
                break
            t = s["t"]
        return t

    def silence_s(self, server: str, after: float) -> float:
        """The longest stretch after AFTER in which SERVER answered no poll (hung or down), in seconds."""
        longest, start = 0.0, None
        for s in self.samples:
            if s["t"] < after:
                continue
            if (s["servers"].get(server) or {}).get("stats"):
                if start is not None:
                    longest = max(longest, s["t"] - start)
                start = None
            elif start is None:
                start = s["t"]
        if start is not None:
            longest = max(longest, self.now - start)
        return longest

    def max_counter(self, server: str, key: str, after: float, per_worker: bool = False) -> dict[int, float]:
        """The highest value of counter KEY seen after AFTER: {pid: max} per worker, or {0: max} for the server."""
        out: dict[int, float] = {}
        for t, st in self.answered(server):
            if t < after:
                continue
            rows = st.get("per_worker") or [] if per_worker else [{"pid": 0, key: st.get("counters", {}).get(key)}]
            for w in rows:
                v = w.get(key)
                if isinstance(v, (int, float)):
                    out[w["pid"]] = max(out.get(w["pid"], v), v)
        return out

    def memory(self, server: str, kind: str = "rss", stats: dict[str, Any] | None = None) -> float | None:
        """MiB of KIND (rss, uss, pss) summed over SERVER's process tree."""
        st = stats if stats is not None else self.latest(server)
        v = (st or {}).get("totals", {}).get(kind)
        return v / MIB if isinstance(v, (int, float)) else None

    def process_memory(self, server: str, stats: dict[str, Any] | None) -> dict[int, tuple[str, float]]:
        """{pid: (role, RSS MiB)} of SERVER's processes in STATS."""
        return {p["pid"]: (p.get("role", ""), p["rss"] / MIB) for p in (stats or {}).get("processes", [])}

    def rate(self, server: str, window: float = 5.0) -> tuple[float | None, float | None]:
        """(CPU cores used, requests/s answered) by SERVER over the last WINDOW seconds of samples."""
        seen = self.answered(server)
        if len(seen) < 2:
            return None, None
        t1, b = seen[-1]
        older = [(t, st) for t, st in seen if t <= t1 - window and st.get("started_at") == b.get("started_at")]
        t0, a = older[-1] if older else seen[0]
        if t1 - t0 < window * 0.6 or a.get("started_at") != b.get("started_at"):
            return None, None
        cpu = (b["totals"]["cpu_seconds"] - a["totals"]["cpu_seconds"]) / (t1 - t0)
        rps = (b["counters"]["requests"] - a["counters"]["requests"]) / (t1 - t0)
        return cpu, rps

    # -- the fault accounting ------------------------------------------------------------------------------------
    def settling(self, t: float, server: str = "") -> Reading | None:
        """WAITING while the accounting may not have counted what happened to SERVER at T yet: for a few seconds,
        and (a busy machine delays Locust's reports) until it has counted requests of SERVER's after T."""
        if self.now - t < ACCOUNTING_LAG_S:
            return waiting("the fault accounting counts it within a few seconds")
        later = self.acc_at(server, t + ACCOUNTING_LAG_S / 2, "requests") if server else None
        if later is not None and self.acc(server, "requests") <= later:
            return waiting("the fault accounting has not counted past it yet (Locust reports late)")
        return None

    def settled_deaths(self, server: str, what: str) -> "list[Death] | Reading":
        """SERVER's deaths once the accounting can have counted them; else the WAITING reading (WHAT died)."""
        deaths = self.deaths(server)
        if not deaths:
            return waiting(f"{what} has not died yet")
        return self.settling(deaths[-1].t, server) or deaths

    def faults_of(self, server: str, kind: str, what: str) -> "list[dict[str, Any]] | Reading":
        """SERVER's KIND events since the start; UNSURE without an event log, WAITING before the first (to WHAT)."""
        if not self.has_events:
            return Reading(None, "?", "", UNSURE, "this lab keeps no event log (WEBMODELS_EVENTS): the faults fired "
                                                 "by hand cannot be counted here")
        return self.events_of(server, [kind]) or waiting(f"no {kind} sent to {what} yet")

    def acc(self, server: str, key: str, default: Any = 0) -> Any:
        v = (self.acc_now.get(server) or {}).get(key)
        return default if v is None else v

    def acc_at(self, server: str, t: float, key: str = "ok") -> int | None:
        """The accounting's KEY for SERVER in the last sample taken at or before T."""
        value = None
        for s in self.samples:
            if s["t"] > t:
                break
            value = (s.get("acc", {}).get(server) or {}).get(key, value)
        return value

    def ok_between(self, server: str, t0: float, t1: float) -> int | None:
        """User requests SERVER answered between T0 and T1 (the accounting arrives up to a second late)."""
        a, b = self.acc_at(server, t0), self.acc_at(server, t1)
        return None if a is None or b is None else b - a

    # -- the event log and the tab's own actions ---------------------------------------------------------------
    def events_of(self, server: str, kinds: Iterable[str]) -> list[dict[str, Any]]:
        kinds = set(kinds)
        return [e for e in self.events if e.get("server") == server and e.get("kind") in kinds
                and e.get("t", 0) >= self.since]

    def result(self, key: str) -> dict[str, Any] | None:
        return self.results.get(key)


Figure = Callable[[Obs], Reading]

