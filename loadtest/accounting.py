"""Fault accounting: classify every request per server, add the counts up across Locust processes, measure downtime.

The words, per server:
  ok          a user request that succeeded;
  expected    a fault request sent by the injector (chaos.py): it *is* the fault, whatever its outcome (a
              crash has no answer, a leak answers 200), so it is neither a success nor a casualty;
  collateral  a user request that failed: it died with a crashed process, was refused while the server was
              down, timed out behind a hang, got a 503 from a full pool;
  downtime    the users' view, and the lab's one definition: the longest stretch in which the server's user
              requests all failed, from the moment the first of them failed (a refused connect at once, a hung
              request at its timeout) to the last failure of the streak (so to the end of the run when the
              server never answers again). Its parts, where a supervisor recorded them:
  dead        the part of the downtime without a process: from its exit to accepting connections again (what
              `webmodels up` logs as "serving again after N ms dead"); downtime − dead is time the process was
              alive and did not answer (hung, or stopped accepting);
  recovery    from an injected fault taking effect (crash/segfault: when the fault request ended, i.e. the
              process died; hang/leak/raise: when it was sent) to the sending of the first user request
              after it that succeeded, from any process ("from then on, users are served again");
  back-off    the part of dead time the server spent *waiting* for its supervisor to restart it (`webmodels
              up` copies Docker's back-off: 100 ms doubling, reset after 10 s up) — the supervisor's policy,
              not the model's cost. It comes from the supervisor's own record of each restart (died →
              started → accepting), not from requests; under compose it is unknown (Docker keeps it).
Every request lands in exactly one of ok / expected / collateral, so ok + expected + collateral = requests.

Built to be merged: a ServerTally holds counts and 100 ms bins of (ok, fail, first/last fail, first/last ok)
— sums and min/max only — so each Locust process sends the *delta* since its last report and the master adds
them; the answer doesn't depend on how the users were spread over processes. Inside a bin that mixes
successes and failures the streak edges are taken from those min/max times, so an edge is exact when the
streak starts or ends on a bin boundary and within one bin (100 ms) otherwise. Recovery needs "the first
success sent after time t" and a bin can't say that, so each process keeps a short ring of its recent
successes' send times (RecoveryWatch) and answers for itself; the master keeps the earliest answer.

No Locust or gevent here: plain data, so it is unit-tested without Locust's monkey-patching.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

BIN_S = 0.1
OK, EXPECTED, COLLATERAL = "ok", "expected", "collateral"
RING = 4096  # recent successes kept per server for recovery look-ups (covers >0.3 s at 12k rps)


def classify(ok: bool, fault: bool) -> str:
    """Say which column a request belongs to."""
    if fault:
        return EXPECTED
    return OK if ok else COLLATERAL


def injection_key(t: float) -> str:
    return f"{t:.6f}"


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass
class ServerTally:
    """Counts and timing of one server's requests, as seen by one process (or merged from many)."""

    requests: int = 0
    ok: int = 0
    expected: int = 0
    collateral: int = 0
    fault_failed: int = 0  # expected requests that failed (a crash, a refused injection): for the curious
    errors: dict[str, int] = field(default_factory=dict)  # collateral by error type
    # bin index → [ok, fail, first_fail, last_fail, first_ok, last_ok]; user requests only, by completion time
    bins: dict[int, list] = field(default_factory=dict)
    recoveries: dict[str, float] = field(default_factory=dict)  # injection key → earliest success after it
    injections: list[dict] = field(default_factory=list)  # [{"t", "fault"}]: filled by the injecting process

    def record(self, kind: str, end: float, error: str | None = None) -> None:
        """Count one request of KIND that completed at END (epoch seconds)."""
        self.requests += 1
        if kind == EXPECTED:
            self.expected += 1
            if error:
                self.fault_failed += 1
            return  # the fault itself says nothing about whether the server is up
        b = self.bins.get(idx := int(end // BIN_S))
        if b is None:
            b = self.bins[idx] = [0, 0, None, None, None, None]
        if kind == OK:
            self.ok += 1
            b[0] += 1
            b[4], b[5] = _min(b[4], end), _max(b[5], end)
        else:
            self.collateral += 1
            b[1] += 1
            b[2], b[3] = _min(b[2], end), _max(b[3], end)
            name = error or "error"
            self.errors[name] = self.errors.get(name, 0) + 1

    def merge(self, other: "ServerTally") -> None:
        """Add OTHER into this tally."""
        for attr in ("requests", "ok", "expected", "collateral", "fault_failed"):
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        for k, n in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + n
        for idx, ob in other.bins.items():
            b = self.bins.get(idx)
            if b is None:
                self.bins[idx] = list(ob)
                continue
            b[0] += ob[0]
            b[1] += ob[1]
            b[2], b[3] = _min(b[2], ob[2]), _max(b[3], ob[3])
            b[4], b[5] = _min(b[4], ob[4]), _max(b[5], ob[5])
        for k, t in other.recoveries.items():
            self.recoveries[k] = _min(self.recoveries.get(k), t)  # type: ignore[assignment]
        self.injections.extend(dict(i) for i in other.injections)

    def to_dict(self) -> dict[str, Any]:
        # string keys and plain lists: survives msgpack between Locust processes and json on disk
        return {"requests": self.requests, "ok": self.ok, "expected": self.expected, "collateral": self.collateral,
                "fault_failed": self.fault_failed, "errors": dict(self.errors),
                "bins": [[idx, *b] for idx, b in self.bins.items()], "recoveries": dict(self.recoveries),
                "injections": [dict(i) for i in self.injections]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ServerTally":
        st = cls(**{k: d.get(k, 0) for k in ("requests", "ok", "expected", "collateral", "fault_failed")})
        st.errors = dict(d.get("errors", {}))
        st.bins = {int(row[0]): list(row[1:]) for row in d.get("bins", [])}
        st.recoveries = dict(d.get("recoveries", {}))
        st.injections = [dict(i) for i in d.get("injections", [])]
        return st

    def summary(self, restarts: list[dict] | None = None, run_from: float | None = None,
                run_to: float | None = None) -> dict[str, Any]:
        """Return the per-server row: the counts, downtime, recovery and (given the supervisor's RESTARTS) back-off."""
        down = downtime(self.bins)
        recovered, never, pending = [], 0, 0
        last_end = max((max(x for x in (b[3], b[5]) if x is not None) for b in self.bins.values()), default=None)
        for inj in sorted(self.injections, key=lambda i: i["t"]):
            first = self.recoveries.get(injection_key(inj["t"]))
            if first is None and (last_end is None or last_end < inj["t"]):
                pending += 1  # injected after the last user request ended: nothing to judge it by
            elif first is None:
                never += 1
            else:
                recovered.append(round((first - inj["t"]) * 1000, 1))
        return {
            "requests": self.requests, "ok": self.ok, "expected": self.expected, "collateral": self.collateral,
            "balanced": self.ok + self.expected + self.collateral == self.requests,
            "fault_failed": self.fault_failed, "injected": len(self.injections),
            "downtime_ms": down["ms"], "downtime_from": down["from"], "downtime_to": down["to"],
            "down_at_end": down["open"],
            "recovery_ms": max(recovered) if recovered else None, "recoveries_ms": recovered[:100],
            "unrecovered": never, "pending": pending, "errors": dict(sorted(self.errors.items(), key=lambda kv: -kv[1])),
            **restart_split(restarts, down, run_from, run_to),
        }


def _overlap_ms(a: float | None, b: float | None, lo: float | None, hi: float | None) -> float:
    if a is None or b is None or lo is None or hi is None:
        return 0.0
    return max(0.0, min(b, hi) - max(a, lo)) * 1000


def restart_split(restarts: list[dict] | None, down: dict[str, Any], run_from: float | None,
                  run_to: float | None) -> dict[str, Any]:
    """Split restart time into the supervisor's wait (died → started) and the model's start (started → ready).

    RESTARTS are the supervisor's records ({"died_at", "started_at", "ready_at"}, epoch seconds; a wait still
    going has no started_at). `backoff_ms` is the wait inside the longest downtime streak, so it reads as "of
    which back-off"; the totals cover the run. None (unknown) without a supervisor record, e.g. under compose.
    """
    if restarts is None:
        return {"backoff_ms": None, "dead_ms": None, "backoff_total_ms": None, "start_total_ms": None,
                "restarts": None}
    end = run_to if run_to is not None else max((r.get("ready_at") or r.get("started_at") or r["died_at"]
                                                 for r in restarts), default=None)
    begin = run_from if run_from is not None else min((r["died_at"] for r in restarts), default=None)
    seen = [r for r in restarts if begin is not None and end is not None and r["died_at"] <= end
            and (r.get("ready_at") or end) >= begin]
    in_streak = dead = total = start = 0.0
    for r in seen:
        waited_until = r.get("started_at") or end  # a wait still going at the end counts up to the end
        total += _overlap_ms(r["died_at"], waited_until, begin, end)
        in_streak += _overlap_ms(r["died_at"], waited_until, down["from"], down["to"])
        dead += _overlap_ms(r["died_at"], r.get("ready_at") or end, down["from"], down["to"])
        if r.get("started_at"):
            start += _overlap_ms(r["started_at"], r.get("ready_at") or end, begin, end)
    return {"backoff_ms": round(in_streak, 1), "dead_ms": round(dead, 1), "backoff_total_ms": round(total, 1),
            "start_total_ms": round(start, 1), "restarts": len(seen)}


def downtime(bins: dict[int, list]) -> dict[str, Any]:
    """Find the longest streak of failures with no success between them (bins without requests don't break it)."""
    best: dict[str, Any] = {"ms": 0.0, "from": None, "to": None, "open": False}
    start = end = None

    def close(open_: bool) -> None:
        if start is not None and (end - start) * 1000 >= best["ms"]:
            best.update(ms=round((end - start) * 1000, 1), **{"from": start, "to": end, "open": open_})

    for idx in sorted(bins):
        ok, fail, ff, lf, fo, lo = bins[idx]
        if not ok:
            if fail:
                start = ff if start is None else start
                end = lf
            continue
        if start is not None:
            if fail and ff < fo:  # failures before this bin's first success still belong to the streak
                end = max(end, min(lf, fo))
            close(False)
            start = end = None
        if fail and lf > lo:  # failures after this bin's last success open a new streak
            start, end = max(ff, lo), lf
    if start is not None:
        close(True)
        best["open"] = True
    return best


class Tally:
    """Per-server tallies of one process (or merged), keyed by server name."""

    def __init__(self) -> None:
        self.servers: dict[str, ServerTally] = defaultdict(ServerTally)

    def record(self, server: str, ok: bool, fault: bool, end: float, error: str | None = None) -> str:
        kind = classify(ok, fault)
        self.servers[server].record(kind, end, error)
        return kind

    def add_injection(self, server: str, fault: str, t: float) -> None:
        self.servers[server].injections.append({"t": t, "fault": fault})

    def add_recovery(self, server: str, key: str, first_ok: float) -> None:
        rec = self.servers[server].recoveries
        rec[key] = _min(rec.get(key), first_ok)  # type: ignore[assignment]

    def merge(self, other: "Tally") -> None:
        for name, st in other.servers.items():
            self.servers[name].merge(st)

    def __bool__(self) -> bool:
        return any(st.requests or st.recoveries or st.injections for st in self.servers.values())

    def to_dict(self) -> dict[str, Any]:
        return {name: st.to_dict() for name, st in self.servers.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tally":
        t = cls()
        for name, sd in d.items():
            t.servers[name] = ServerTally.from_dict(sd)
        return t

    def summary(self, order: Iterable[str] = (), restarts: dict[str, list[dict]] | None = None,
                run_from: float | None = None, run_to: float | None = None) -> dict[str, dict[str, Any]]:
        """Return one row per server; RESTARTS (server → the supervisor's records) adds the back-off split."""
        names = [n for n in order if n in self.servers] + sorted(n for n in self.servers if n not in order)
        return {n: self.servers[n].summary(None if restarts is None else restarts.get(n, []), run_from, run_to)
                for n in names}


class RecoveryWatch:
    """Answer "when did this process first see a success after injection t?" for each server."""

    def __init__(self, ring: int = RING) -> None:
        self.recent: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=ring))
        self.pending: dict[str, list[float]] = defaultdict(list)

    def on_success(self, server: str, start: float) -> list[tuple[str, float]]:
        """Note a success sent at START; return (injection key, START) for each pending injection it answers.

        The recovery point is when the first request that went on to succeed was *sent*: from then on a
        user is served again. Not when a success ended: a response the server sent just before it died
        can end a moment after the injection time and fake a sub-millisecond recovery; and not the end of
        the first request sent afterwards either, which would add that request's own latency (50 ms of
        /io plus queueing) to a prefork server that never stopped serving.
        """
        self.recent[server].append(start)
        pend = self.pending.get(server)
        if not pend:
            return []
        done = [t for t in pend if t <= start]
        if done:
            self.pending[server] = [t for t in pend if t > start]
        return [(injection_key(t), start) for t in done]

    def on_injected(self, server: str, t: float) -> float | None:
        """Note an injection at T; return the first success sent after it already seen, else wait for one."""
        first = min((s for s in self.recent[server] if s >= t), default=None)
        if first is None:
            self.pending[server].append(t)
        return first


# (title, summary key or None for a computed cell, right-aligned); the console table's columns, in order
TABLE = (("server", None, False), ("requests", "requests", True), ("ok", "ok", True), ("faults", "expected", True),
         ("collateral", "collateral", True), ("downtime ms", "downtime_ms", True), ("dead ms", "dead_ms", True),
         ("back-off ms", "backoff_ms", True), ("recovery ms", None, True), ("at end", None, False),
         ("balanced", None, False))
GAP = "  "  # between columns: two spaces, so no figure ever touches its neighbour


def _cell(name: str, s: dict[str, Any], title: str, key: str | None) -> str:
    if title == "server":
        return name
    if title == "recovery ms":
        if s["recovery_ms"] is None:
            return "never" if s["unrecovered"] else "-"
        return f"{s['recovery_ms']:.1f}" + (f" (+{s['unrecovered']} never)" if s["unrecovered"] else "")
    if title == "at end":
        return "down" if s["down_at_end"] else "up"
    if title == "balanced":
        return "yes" if s["balanced"] else "NO"
    value = s.get(key) if key else None
    if value is None:
        return "-"  # unknown (no supervisor record), not zero
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """Render the per-server summary as a table whose columns are as wide as their widest cell."""
    cells = [[_cell(name, s, title, key) for title, key, _ in TABLE] for name, s in summary.items()]
    widths = [max([len(title), *(len(row[i]) for row in cells)]) for i, (title, _, _) in enumerate(TABLE)]

    def line(row: list[str]) -> str:
        return GAP.join(c.rjust(w) if right else c.ljust(w)
                        for c, w, (_, _, right) in zip(row, widths, TABLE)).rstrip()
    head = line([title for title, _, _ in TABLE])
    return "\n".join([head, "-" * len(head), *(line(row) for row in cells)])


def write_json(path: str, document: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2, sort_keys=False)
        f.write("\n")
