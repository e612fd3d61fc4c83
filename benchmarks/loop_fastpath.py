#!/usr/bin/env python3
"""µs of Python per keep-alive hello request: the loop engine's protocol against uvicorn's, in-process.

    .venv/bin/python benchmarks/loop_fastpath.py [--requests 200000] [--rounds 5] [--profile]

No sockets and no wrk: each protocol gets a fake transport (write() keeps nothing, the buffer is always
empty) inside a running uvloop, and we feed it `GET /` N times, each followed by one `await sleep(0)` (one
turn of the loop: uvicorn answers from a task, so it needs the turn; we give ours the same). What is left is
exactly the per-request Python work of each server — parsing, routing, the handler, stats, rendering, the
connection policy — which is what separates the two under wrk, without the kernel, the client or the
neighbours' noise. Timed in process CPU time; best of ROUNDS. `--profile` prints cProfile's top functions
for ours.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from typing import Any

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n\r\n"


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8003)}.get(name, default)


def ours(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Protocol, Any]:
    import socket

    from webmodels.config import build_config
    from webmodels.connection import Limits, Policy
    from webmodels.runtime import Runtime
    from webmodels.servers.eventloop import HttpProtocol, LoopEngine
    from webmodels.servers.lifecycle import Lifecycle
    config = build_config("eventloop", {}, {})
    rt = Runtime(config)
    life = Lifecycle(config, rt, Policy(Limits.from_config(config), rt), alone=True)
    engine = LoopEngine(config, socket.socket(), rt, life)
    engine.loop.close()
    engine.loop = loop  # the protocol under test runs on the benchmark's loop
    asyncio.set_event_loop(loop)
    return HttpProtocol(engine), engine


def uvicorn_proto(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Protocol, Any]:
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"Hello, world!"})

    config = Config(app=app, http="httptools", loop="uvloop", access_log=False, log_level="warning", lifespan="off")
    config.load()
    return HttpToolsProtocol(config, ServerState(), {}, _loop=loop), None


class Floor(asyncio.Protocol):
    """The harness alone: a protocol that answers every read with a constant (what nothing costs)."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!")


def floor(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Protocol, Any]:
    return Floor(), None


async def drive(make: Any, n: int) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    proto, keep = make(loop)
    transport = FakeTransport()
    proto.connection_made(transport)
    feed, turn = proto.data_received, asyncio.sleep
    for _ in range(200):  # warm-up
        feed(REQUEST)
        await turn(0)
    before = transport.written
    t0 = time.process_time()
    for _ in range(n):
        feed(REQUEST)
        await turn(0)
    took = time.process_time() - t0
    assert not transport.closed, "the protocol closed the connection"
    return took * 1e6 / n, (transport.written - before) // n


def measure(make: Any, n: int) -> tuple[float, int]:
    import uvloop
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(drive(make, n))
    finally:
        loop.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    results: dict[str, list[float]] = {"ours": [], "uvicorn": [], "floor": []}
    size = {}
    for _ in range(args.rounds):  # alternate, so drift hits both
        for name, make in (("ours", ours), ("uvicorn", uvicorn_proto), ("floor", floor)):
            us, size[name] = measure(make, args.requests)
            results[name].append(us)
    a, b = min(results["ours"]), min(results["uvicorn"])
    print(f"# in-process, fake transport, {args.requests} keep-alive GET / per round, best of {args.rounds} "
          f"(process CPU time); Python {sys.version.split()[0]}")
    print(f"loop engine : {a:6.2f} µs/request  ({size['ours']} B/response)  rounds: "
          + " ".join(f"{x:.2f}" for x in results["ours"]))
    print(f"uvicorn     : {b:6.2f} µs/request  ({size['uvicorn']} B/response)  rounds: "
          + " ".join(f"{x:.2f}" for x in results["uvicorn"]))
    f = min(results["floor"])
    print(f"harness     : {f:6.2f} µs/request  (a protocol that writes a constant: the loop turn, the fake write)")
    print(f"uvicorn / ours = {b / a:.2f}×; above the harness: ours {a - f:.2f} µs, uvicorn {b - f:.2f} µs "
          f"({(b - f) / (a - f):.2f}×)")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        measure(ours, args.requests)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
