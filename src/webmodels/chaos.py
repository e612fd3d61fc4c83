"""The chaos schedule: which fault hits which server when — pure data, shared by Locust's injector and the soak.

One shape for every schedule, a Shot: seconds after the start, a server, a fault kind (faults.FAULTS).
  periodic  one kind at every server it applies to, every EVERY seconds (Locust's `--fault KIND
            --fault-every N`): shots at N, 2N, 3N … after the start, so the period does not drift with
            response times, and none in the last period of a run whose end is known;
  seeded    a random fault every 1–3 s, each server in turn (rounds in a shuffled order; the soak, Locust's
            `--fault chaos --chaos-seed N`):
            the same seed and servers give the same shots wherever they are drawn, so a run is replayed by
            its seed. It stops SETTLE_S before UNTIL, so the last fault is recovered from before the end.
Firing the shots is the caller's (a greenlet in Locust's controlling process): nothing here does I/O or
imports Locust or gevent, so the bench and the tests use it as it is.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterable, Iterator, NamedTuple

from .config import MASTER_MODELS
from .faults import BY_KIND, KINDS, SERVER, WORKER

START_S = 2.0  # the seeded schedule's first shot: Locust's users are all running by then
GAP_S = (1.0, 3.0)  # between two seeded shots (any server)
SETTLE_S = 4.0  # no seeded shot this close to the end: each server gets time to recover before it


class Shot(NamedTuple):
    at: float  # seconds after the schedule starts
    server: str  # a model name (the lab's servers are named after their models)
    kind: str  # a key of faults.BY_KIND


def applies(kind: str, server: str) -> bool:
    """True if KIND can hit SERVER: killing a worker needs a model with workers."""
    return BY_KIND[kind].ends != WORKER or server in MASTER_MODELS


def chaos_kinds(server: str) -> tuple[str, ...]:
    """The seeded schedule's faults for SERVER: every kind that applies, with one kill, the smallest it can do.

    A master model loses a worker (kill-worker), a single-process model the whole server (kill-process):
    killing a master's whole server would only repeat the single-process lesson.
    """
    kinds = [k for k in KINDS if applies(k, server)]
    if any(BY_KIND[k].ends == WORKER for k in kinds):
        kinds = [k for k in kinds if BY_KIND[k].ends != SERVER]
    return tuple(kinds)


def periodic(servers: Iterable[str], kind: str, every: float, until: float | None = None) -> Iterator[Shot]:
    """KIND at every server it applies to, every EVERY s; none in the last period before UNTIL (None: for ever)."""
    targets = [s for s in servers if applies(kind, s)]
    if every <= 0 or not targets:
        return
    for n in itertools.count(1):
        if until is not None and n * every > until - every:
            return  # a fault in the last period could not show its effect, or even arrive, before the end
        for server in targets:
            yield Shot(round(n * every, 6), server, kind)


def seeded(seed: int, servers: Iterable[str], until: float | None = None) -> Iterator[Shot]:
    """Random shots from SEED, one every GAP_S, dealt to the servers in rounds, until SETTLE_S before UNTIL.

    Each round hits every server once, in an order shuffled anew: a server is never spared for long (a draw
    with replacement left one of six servers without a single fault in a 60 s soak), and no server is hit
    twice before the others have been hit once. UNTIL None: for ever.
    """
    rng = random.Random(seed)
    names = sorted(set(servers))  # the order the servers were listed in must not change the schedule
    t, deck = START_S, []
    while names and (until is None or t < until - SETTLE_S):
        if not deck:
            deck = rng.sample(names, len(names))
        server = deck.pop()
        yield Shot(round(t, 3), server, rng.choice(chaos_kinds(server)))
        t += rng.uniform(*GAP_S)
