"""Deadline buckets with lazy invalidation: an event loop's one timer for every connection it holds.

A connection sits in at most one *valid* bucket, the one for the earliest moment it must be looked at (its `wake`
key). Deadlines that move later (every response pushes the keep-alive deadline on) touch nothing: the old bucket
fires, the connection finds its deadline not due and files itself under the new one. Only a deadline that moves
*earlier* (a head begins, bytes wait to be sent, a linger, a stop) adds an entry, and the entry it supersedes is
skipped when its bucket comes (its key no longer matches). So a tick costs the buckets that came due —
O(connections whose deadline passed), never O(connections): 10,000 idle keep-alive connections cost nothing
until their `--keepalive` runs out. A timer handle per connection (`call_later`) would cost arming and cancelling
one per request; a heap, O(log n) per re-arm. The price: a deadline fires up to one bucket late.
"""

from __future__ import annotations

from typing import Any

BUCKET_S = 0.05  # width of one bucket: a deadline fires at most this much (plus one tick) late
NEVER = 1 << 62  # a wake key later than any deadline: "no bucket holds this connection"


class Deadlines:
    """Buckets of BUCKET_S keyed by time: `add(key, conn)`, then `due(now)` pops what came due, in order."""

    __slots__ = ("buckets", "done")

    def __init__(self, now: float) -> None:
        self.buckets: dict[int, list[Any]] = {}
        self.done = int(now / BUCKET_S)  # every bucket up to this key has been processed

    def key(self, when: float) -> int:
        """The bucket for WHEN: the first one processed at or after WHEN (never early)."""
        key = int(when / BUCKET_S) + 1
        return key if key > self.done else self.done + 1

    def add(self, key: int, proto: Any) -> None:
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = [proto]
        else:
            bucket.append(proto)

    def due(self, now: float) -> list[tuple[int, list[Any]]]:
        """Pop every bucket whose time has come; return (key, protocols) pairs in order."""
        end = int(now / BUCKET_S)
        out = []
        buckets = self.buckets
        if buckets:
            for key in range(self.done + 1, end + 1):
                bucket = buckets.pop(key, None)
                if bucket is not None:
                    out.append((key, bucket))
        if end > self.done:
            self.done = end
        return out
