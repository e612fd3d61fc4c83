"""Turn the --workload option into the requests a user sends: (name, path, weight) triples, names without the server."""

from __future__ import annotations

import random
from typing import NamedTuple

WORKLOADS = ("hello", "io", "cpu", "bytes", "mixed", "counter")


class Call(NamedTuple):
    name: str  # the statistics name after the server, e.g. "/io" (the query stays out so rows don't explode)
    path: str
    weight: int


def calls(workload: str, io_ms: int = 50, cpu_ms: int = 10, kb: int = 16) -> list[Call]:
    """Return the weighted requests of WORKLOAD."""
    hello = Call("/", "/", 1)
    io = Call("/io", f"/io?ms={io_ms}", 1)
    cpu = Call("/cpu", f"/cpu?ms={cpu_ms}", 1)
    bytes_ = Call("/bytes", f"/bytes?kb={kb}", 1)
    match workload:
        case "hello":
            return [hello]
        case "io":
            return [io]
        case "cpu":
            return [cpu]
        case "bytes":
            return [bytes_]
        case "mixed":  # mostly waiting, some payload, a little CPU: roughly a web app
            return [hello._replace(weight=4), io._replace(weight=3), bytes_._replace(weight=2), cpu._replace(weight=1)]
        case "counter":  # the race: same read → yield → write under both modes, side by side
            return [Call("/counter unsafe", "/counter?mode=unsafe", 1), Call("/counter locked", "/counter?mode=locked", 1)]
    raise ValueError(f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")


def pick(options: list[Call], rng: random.Random = random._inst) -> Call:  # type: ignore[attr-defined]
    """Choose one call by weight."""
    if len(options) == 1:
        return options[0]
    return rng.choices(options, weights=[c.weight for c in options])[0]
