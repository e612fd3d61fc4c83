"""Every configuration against a mutated stream of the request corpus (tests/requests): no death, no hang, no leak.

For a bounded time per server, a few client threads open connection after connection and send corpus
requests after byte flips, truncations, insertions, duplications and concatenations (pipelining), cut into
pieces at random places, sometimes with a pause between pieces; then they half-close (the server sees EOF)
or stay silent (the server's --header-timeout must end it). Each connection must get a reply or be closed
within a deadline. Afterwards the server is the same process, answers `/`, lost no worker, and counts
nothing in flight.

Time per server: WEBMODELS_FUZZ_SECONDS (3 in `make test`, 60 under `make fuzz`); the seed is printed and
can be replayed with WEBMODELS_FUZZ_SEED. Every configuration of the table (support.CONFIGS) is fuzzed.
"""

from __future__ import annotations

import collections
import os
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from .support import CONFIGS, Server, wait_for

REQUESTS = Path(__file__).parent / "requests"
# /io?ms=5 → ms=0: a mutation that duplicates digits must not turn a request into a minute-long sleep.
CORPUS = [p.read_bytes().replace(b"/io?ms=5", b"/io?ms=0") for p in sorted(REQUESTS.glob("*.http"))]
TOKENS = [b"\r\n", b"\r\n\r\n", b"\r", b"\n", b" ", b":", b"0\r\n\r\n", b"Transfer-Encoding: chunked\r\n",
          b"Content-Length: 5\r\n", b"Host: h\r\n", b"GET / HTTP/1.1\r\n", b"Connection: close\r\n",
          b"Expect: 100-continue\r\n", b"Upgrade: x\r\nConnection: upgrade\r\n", b"OPTIONS * HTTP/1.1\r\n"]

FLAGS = ("--header-timeout", "1", "--keepalive", "1")  # every wait short: a silent client is cut after 1 s
SECONDS = float(os.environ.get("WEBMODELS_FUZZ_SECONDS", "3"))
CLIENTS = 6
SILENT = 0.1  # share of connections that neither finish nor half-close: the header timeout must end them
DEADLINE = 10.0  # after its last byte, a connection must be answered or closed within this (queueing included)


def mutate(rng: random.Random) -> bytes:
    """One stream: 1-3 corpus requests, each after 0-4 mutations, concatenated."""
    out = bytearray()
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        data = bytearray(rng.choice(CORPUS))
        for _ in range(rng.choice((0, 1, 1, 2, 4))):
            op, at = rng.randrange(6), rng.randint(0, len(data))
            if op == 0 and data:
                data[min(at, len(data) - 1)] ^= rng.randint(1, 255)
            elif op == 1:
                del data[at:]
            elif op == 2:
                data[at:at] = rng.randbytes(rng.randint(1, 16))
            elif op == 3:
                data[at:at] = rng.choice(TOKENS)
            elif op == 4:
                del data[at:at + rng.randint(1, 16)]
            else:
                data[at:at] = data[at:at + rng.randint(1, 64)]
        out += data
    return bytes(out)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.hangs: list[bytes] = []
        self.bad_replies: list[tuple[bytes, bytes]] = []

    def add(self, what: str, status: int | None = None) -> None:
        with self.lock:
            self.counts[what] += 1
            if status is not None:
                self.statuses[status] += 1


def one_connection(srv: Server, rng: random.Random, tally: Tally) -> None:
    stream = mutate(rng)
    silent = rng.random() < SILENT
    try:
        sock = socket.create_connection((srv.host, srv.port), timeout=DEADLINE)
    except OSError:
        tally.add("connect failed")
        return
    with sock:
        try:
            cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 4)))) \
                if len(stream) > 1 else []
            for a, b in zip([0, *cuts], [*cuts, len(stream)]):
                sock.sendall(stream[a:b])
                if rng.random() < 0.2:
                    time.sleep(rng.uniform(0, 0.01))
            if not silent:
                sock.shutdown(socket.SHUT_WR)
            with tally.lock:
                tally.counts["bytes sent"] += len(stream)
        except OSError:
            pass  # the server may answer (and close) before we finished sending: read what it said
        t0 = time.monotonic()
        sock.settimeout(0.25)
        while True:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                if time.monotonic() - t0 > DEADLINE:
                    with tally.lock:
                        tally.hangs.append(stream[:200])
                    tally.add("hung")
                    return
                continue
            except OSError:
                tally.add("reset")
                return
            if not data:
                tally.add("closed without a reply")
                return
            if not data.startswith(b"HTTP/1.1 ") or not data[9:12].isdigit():
                with tally.lock:
                    tally.bad_replies.append((stream[:200], data[:200]))
                tally.add("bad reply")
                return
            tally.add("answered", int(data[9:12]))
            return


def hammer(srv: Server, seconds: float, seed: int) -> Tally:
    tally = Tally()
    end = time.monotonic() + seconds

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while time.monotonic() < end:
            one_connection(srv, rng, tally)
            tally.add("connections")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + DEADLINE + 30)
        assert not t.is_alive(), "a fuzz client is stuck"
    return tally


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CONFIGS))
def test_server_survives_a_mutated_corpus(start_server, config: str) -> None:
    seed = int(os.environ.get("WEBMODELS_FUZZ_SEED") or random.randrange(1 << 30))
    srv: Server = start_server(*CONFIGS[config].argv(*FLAGS), faults=False)
    before = srv.stats()
    tally = hammer(srv, SECONDS, seed)
    c = tally.counts
    print(f"\nfuzz {config}: seed={seed} {SECONDS:g}s connections={c['connections']} bytes={c['bytes sent']} "
          f"answered={c['answered']} closed={c['closed without a reply']} reset={c['reset']} "
          f"hung={c['hung']} statuses={dict(sorted(tally.statuses.items()))}")
    assert not tally.hangs, f"seed {seed}: {len(tally.hangs)} connections neither answered nor closed, " \
                            f"e.g. {tally.hangs[:3]}"
    assert not tally.bad_replies, f"seed {seed}: not an HTTP reply: {tally.bad_replies[:3]}"
    assert c["connections"] >= 10 and c["answered"] > 0, c
    assert not {s for s in tally.statuses if s >= 500} - {503, 505}, (seed, tally.statuses)  # no 500
    # the same process, still serving, nothing stuck in flight, no worker lost
    assert srv.alive()
    assert srv.get("/").status_code == 200
    after = wait_for(lambda: (s := srv.stats())["counters"]["in_flight"] == 1 and s,  # 1 = this stats request
                     timeout=DEADLINE, what="in_flight back to 0")
    assert after["pid"] == before["pid"] == srv.pid
    if "worker_exits" in after["counters"]:
        assert after["counters"]["worker_exits"] == before["counters"]["worker_exits"], after["counters"]
