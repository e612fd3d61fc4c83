"""The connection policy, stated once: which deadline applies, what its expiry answers, keep-alive, closing.

Sans-IO, like the codec beside it (h11's `Connection` is the model): this module imports neither `socket`
nor `asyncio` and never reads a clock — every call takes `now`, a `time.monotonic()` float the engine
already has. An engine feeds it what happened (bytes arrived, the peer closed, a response was rendered,
so many bytes are still unsent) and asks it what to do (how long to wait, what to answer when the wait is
over, whether to keep the connection, how to close it). The engine keeps only *how it waits*: a blocking
`recv` with a timeout, a selector, or a transport callback and a periodic sweep. So every engine answers
the same bytes with the same bytes at the same moments.

# The deadlines (one rule each, for every engine)
At any moment at most one deadline applies; `Connection.deadline()` says which and when.

| phase   | when it applies                                  | counted from                    | on expiry        |
|---------|--------------------------------------------------|---------------------------------|------------------|
| `new`   | a fresh connection that has sent nothing yet     | the accept                      | silent close     |
| `head`  | a request head has begun but is not complete     | the head's first byte           | 408 (names head) |
| `body`  | the head is complete, the body still arriving    | the head's end                  | 408 (names body) |
| `idle`  | keep-alive: between a response and the next head | the end of the last response    | silent close     |
| `send`  | a response the client does not read              | the last progress of the send   | abort (reset)    |
| `linger`| closing, reading and discarding the client's rest| the last response leaving       | close            |

`head` and `body` both get `--header-timeout`, and each is a *total* budget, not an idle timer: a
per-byte timer would let a client that sends one byte every `--header-timeout - ε` seconds hold the
connection forever (slowloris for heads, R.U.D.Y. for bodies). The body's budget starts when its head ends,
so a fast head does not pay for a slow body and vice versa. While the server owes a response (a handler
runs, responses wait in order, bytes wait to be sent) the client's clock stops: a phase never starts
before the end of the last response.

`--send-timeout` counts from the last *progress* (nginx's `send_timeout`, Apache's `Timeout`), not from
the start: a slow reader that keeps reading is served, one that stopped is aborted — a reset, not a FIN,
so the kernel does not keep retransmitting megabytes to a client that will never read them.

`--min-rate BYTES_PER_S` (0 = off) is Apache mod_reqtimeout's `MinRate`: each byte of the head or body
received extends that phase's deadline by 1/rate seconds, so a large upload at a decent rate is not cut by
a short `--header-timeout`, while a client below the rate still runs out of time. The cap: the extended
deadline is never more than `--header-timeout` after the last byte received, so a client that sends a burst
and then stalls does not bank the burst for later (mod_reqtimeout caps with an explicit maximum instead;
ours needs no extra flag). Bytes count per read: the read that starts a phase counts whole.

# The rule at a stop (`Policy.drain(now)`: a shutdown, a retire or a recycle began)
The same for every engine, by the state the connection is in when the stop comes:

| state at the stop                        | what happens                                            | `end`        |
|------------------------------------------|---------------------------------------------------------|--------------|
| state at the stop                        | what happens                                            | `end`        |
|------------------------------------------|---------------------------------------------------------|--------------|
| idle keep-alive, between requests        | closed at once, silently (nothing asked, nothing owed)  | `stop-idle`  |
| silent: accepted, nothing sent yet       | keeps its `new` deadline: asks → answered with `Connection: close`; else a silent close at `--header-timeout` | `stop-silent` |
| a head or body half-sent                 | keeps its `head`/`body` deadline: completed → answered with `Connection: close`, else 408 | (as usual) |
| a request being served                   | finished and answered with `Connection: close`          | `close`      |

Everything is bounded by the engine's `--graceful-timeout`; what is still held then is aborted (`forced`).
Only the idle keep-alive connection changes: everything else keeps its own deadline, because a connection
accepted before the stop may have its request on the wire (a client paused between connect and send on a
loaded machine is still a client; cutting silent ones after a second lost such requests). An idle
keep-alive connection is closed at once: a request its client sends at that very moment is lost the way
HTTP/1.1 always loses it (the client sees the close and may retry an idempotent request).

# Admission (the 503 at the door)
An engine that bounds how many connections it serves at once (the pool's threads) asks `Policy.admits`
when a new connection's first request arrives: admitted while fewer new connections wait than there are free
runners plus `--queue` — and always while draining (what was accepted before a stop is served).
A connection refused there gets `Connection.reject(now)`: a 503 rendered, counted and closed here, like
every other refusal. An admitted connection is never refused later: a keep-alive connection is a promise.

# How a connection ends: `closing` says how, `end` says why
`closing` is the engine's instruction (close, linger or abort, below); `end` is the one field that says
why, for tests and `/_lab/stats` (`Policy.ends` counts them): `close` (a response that did not keep the
connection), `idle` (keep-alive ran out), `silent` (a new connection never asked), `408`, `refused`
(the codec's 4xx), `busy` (the 503 at admission), `send` (the client stopped reading: reset), `peer`
(the client closed or reset), `stop-idle`, `stop-silent`, `forced` (the server gave up at its deadline).

# What an expiry answers
408 only when a request has begun (head or body) — its message says which; silence when nothing has been
asked (`new`, `idle`); an abort when the client does not read (`send`); nothing else to say at the end of a
linger. A 408 then closes without lingering: the client has been silent or too slow already, and lingering
would let a slowloris hold a sync worker for another `LINGER_S`.

# Keep-alive (a one-way latch, as in h11)
After a response the connection stays open only if: the client wants it (HTTP/1.1 without
`Connection: close`, HTTP/1.0 with `Connection: keep-alive`), `--keepalive` > 0, the server is not
draining, this process has not reached `--max-requests`, the response does not ask to close
(`Response.close`), and the peer has not half-closed with nothing left to answer. Once off, never on
again: requests after a closing one are not answered.

# Closing: close, linger or abort
Closing with input possibly unread (a 413 while the client is still uploading, a `Connection: close`
response with pipelined bytes behind it) makes the kernel send a reset, which can destroy the reply before
the client reads it. So then the policy says *linger* (nginx's lingering close): shut down the write side,
keep reading and discarding for at most `LINGER_S` seconds or `LINGER_BYTES` bytes, then close. The
engine does the reading; `receive()` and `eof()` say when to stop. A clean close at a request boundary
does not linger (that would cost a sync worker a round trip per `Connection: close` request).

# Accounting, counted once here
A request the codec refused, a 408, and a request the peer abandoned half-sent (EOF or reset while a
request had begun) are each counted once (`request_finished(status, started=False)`) — by the policy, not
by the engines. Bytes arriving after the server decided to close are not requests and are not counted.

# The after-response hook
`Response.after` (e.g. "now kill this process") runs once the response's bytes have left (`sending(0)`),
or the connection is gone (`closed()`), or `AFTER_WAIT` seconds have passed (a deadline of kind `after`).

Threading: a `Connection` belongs to one thread at a time (the engine hands it over, it does not share it).
The `Policy` is shared by every connection of a process; its counters are safe to bump from pool threads.

# Wiring it into an engine
One `Policy(Limits.from_config(config, max_requests=jittered), runtime)` per process; `policy.drain()` when
the process stops accepting; `policy.exhausted` tells a worker to recycle. Per connection,
`conn = policy.connection(now)` at accept, then:
- on bytes: `for ev in conn.receive(data, now)`: `conn.refuse(ev, now)` for an HttpError, else dispatch and
  `conn.respond(req, resp, now)`; write what they return; stop at the first `conn.closing`;
- after every write: `conn.sending(unsent, now)` (0 = all handed to the kernel); on EOF `conn.eof(now)`;
- to wait: `conn.timeout(now)` (None = block); when it is 0, `act = conn.expire(now)`, write `act.reply`;
- to end, by `conn.closing`: CLOSE → close; ABORT → reset; LINGER → shut down writing, then read into
  `receive()` while `conn.lingering`; always `conn.closed(now)` once the socket is gone (or `abort(now)`
  when the server itself gives up, e.g. a forced shutdown).
servers/sync.py is that loop for blocking sockets. The event loop (servers/eventloop.py) reports
`transport.get_write_buffer_size()` to `sending()` after each write and while the buffer drains (progress
is how the send deadline moves), and checks `expire()` when a connection's deadline bucket comes due.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .codec import (BODY_TIMEOUT_408, BUSY_503, HEAD, HEAD_TIMEOUT_408, HttpError, Request, RequestParser,
                    Response, error_response, render)
from .log import log

INF = float("inf")
LINGER_S = 2.0  # at most this long reading and discarding before a close that could otherwise reset
LINGER_BYTES = 4 * 1024 * 1024  # ... or this many bytes (4 × the largest body we accept)
AFTER_WAIT = 1.0  # Response.after waits at most this long for its response's bytes to leave

# Deadline kinds: what `deadline()` says applies now, and what `expire()` answers.
NEW, HEAD_PHASE, BODY_PHASE, IDLE, SEND, LINGER_PHASE, AFTER = "new", "head", "body", "idle", "send", "linger", "after"
# How a connection ends (`Connection.closing`): after the bytes already written have been sent ...
CLOSE = "close"  # ... close it
LINGER = "linger"  # ... shut down writing, read and discard until `lingering` is False, then close
ABORT = "abort"  # now: reset it (SO_LINGER (1, 0), then close / transport.abort()): unsent bytes are dropped


class Counts(Protocol):
    def request_finished(self, status: int, started: bool = True) -> None: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """The numbers the policy applies; `from_config` maps the flags."""

    header_timeout: float = 10.0
    keepalive: float = 5.0  # 0 = close after every response
    send_timeout: float = 30.0
    min_rate: float = 0.0  # bytes per second; 0 = off
    max_requests: int = 0  # responses per process before it recycles (already jittered); 0 = never
    queue: int = 0  # new connections that may wait for a runner before the next gets a 503 (admits())
    linger_s: float = LINGER_S
    linger_bytes: int = LINGER_BYTES
    after_wait: float = AFTER_WAIT

    @classmethod
    def from_config(cls, config: Any, max_requests: int | None = None) -> Limits:
        """Limits from a `Config`; MAX_REQUESTS overrides --max-requests (a worker passes its jittered value)."""
        return cls(header_timeout=config.header_timeout, keepalive=config.keepalive,
                   send_timeout=config.send_timeout, min_rate=config.min_rate, queue=config.queue,
                   max_requests=config.max_requests if max_requests is None else max_requests)


class Policy:
    """What every connection of one process shares: the limits, the draining flag, the response budget."""

    def __init__(self, limits: Limits, counts: Counts | None = None) -> None:
        self.limits = limits
        self.counts = counts  # the Runtime: where refusals and abandoned requests are counted
        self.draining = False  # set by drain(): every response then closes, the stop rule applies
        self.drained_at = -INF  # when the stop began (the clocks of the stop rule start there)
        self.responses = 0  # responses started in this process (for --max-requests)
        self.on_exhausted: Callable[[], None] | None = None  # called once, at the --max-requests'th response
        self.ends: dict[str, int] = {}  # how connections ended (Connection.end), for /_lab/stats
        self._next = itertools.count(1).__next__  # atomic under the GIL, unlike `+= 1` from pool threads
        self._reuse = limits.keepalive > 0  # keepalive on and not draining: one load on the fast path

    def drain(self, now: float = -INF) -> None:
        """A stop began at NOW (shutdown, retire, recycle): no more keep-alive, and the stop rule applies.

        Flags only, safe from a signal handler. The engine must then look at every connection's deadline
        again (they moved earlier: an idle keep-alive one is due at once).
        """
        if not self.draining:
            self.drained_at = now
        self.draining = True
        self._reuse = False

    @property
    def exhausted(self) -> bool:
        """True once --max-requests responses were started: the engine recycles the process."""
        return 0 < self.limits.max_requests <= self.responses

    def admits(self, busy: int, runners: int, waiting: int) -> bool:
        """Admit a new connection's first request? BUSY of RUNNERS are serving, WAITING new ones in line.

        Room is the free runners plus the queue, and those already waiting take it first: "a runner is free"
        alone let a burst in past both (runners that have not yet taken their connections still count as free:
        100 requests at once on a loaded machine were all admitted to 32 threads and a queue of 32).
        """
        return self.draining or waiting < max(0, runners - busy) + self.limits.queue

    def connection(self, now: float) -> Connection:
        return Connection(self, now)

    def _count(self, status: int) -> None:
        if self.counts is not None:
            self.counts.request_finished(status, started=False)

    def _started(self) -> int:
        """Number the response being started; at the --max-requests'th, tell whoever recycles (once)."""
        n = self.responses = self._next()
        if n == self.limits.max_requests and self.on_exhausted is not None:
            self.on_exhausted()
        return n


@dataclass(frozen=True, slots=True)
class Action:
    """What an expired deadline asks of the engine: write REPLY (may be empty), then end as THEN says."""

    kind: str  # the deadline that expired (NEW, HEAD_PHASE, ...)
    reply: bytes
    then: str  # CLOSE | LINGER | ABORT


class Connection:
    """One client connection's policy state; see the module docstring for the rules."""

    __slots__ = ("policy", "limits", "parser", "closing", "end", "peer_eof", "served", "_owed", "_unsent",
                 "_progress_at", "_free_at", "_rx_start", "_rx_last", "_rx_bytes", "_final_at", "_discarded", "_after",
                 "_closed")

    def __init__(self, policy: Policy, now: float) -> None:
        self.policy = policy
        self.limits = policy.limits
        self.parser = RequestParser()
        self.closing = ""  # "" while reusable; else CLOSE, LINGER or ABORT (see the module docstring)
        self.end = ""  # why it ends (see "How a connection ends"); set with the first `closing`
        self.peer_eof = False
        self.served = 0  # responses rendered on this connection (refusals and 408 included)
        self._owed = 0  # events handed out by receive() not yet answered by respond()/refuse()
        self._unsent = 0  # bytes the engine reported still waiting to leave
        self._progress_at = now  # last progress of the send
        self._free_at = now  # when the server last owed nothing (accept, or end of the last response)
        self._rx_start = now  # when the current head/body phase began
        self._rx_last = now  # the last byte of it
        self._rx_bytes = 0  # bytes received during it (for --min-rate)
        self._final_at = -1.0  # when the last response had left, once closing (-1: not yet)
        self._discarded = 0  # bytes read after deciding to close
        self._after: list[tuple[Callable[[], None], float]] = []  # hooks waiting for their bytes to leave
        self._closed = False

    # -- what happened -------------------------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list[Request | HttpError]:
        """Feed DATA; return the requests it completed, in order, possibly ending with an HttpError.

        Answer each in order with `respond()` (a Request) or `refuse()` (an HttpError), and stop as soon
        as `closing` is set. Once closing, input is discarded (and counted against the linger budget).
        """
        if self.closing:
            self._discarded += len(data)
            if self.closing == LINGER and self._discarded > self.limits.linger_bytes:
                self.closing = CLOSE  # it keeps sending: stop waiting for it
            return []
        parser = self.parser
        before = parser.phase
        events = parser.feed(data)
        phase = parser.phase
        if events:
            self._owed += len(events)
        if phase:  # a request has begun and is not complete: its head or body clock runs
            if phase != before or events:
                self._rx_start = now
                self._rx_bytes = len(data)
            else:
                self._rx_bytes += len(data)
            self._rx_last = now
        return events

    def eof(self, now: float) -> None:
        """The peer shut down its sending side (recv returned b"" / eof_received)."""
        self.peer_eof = True
        if self.closing:
            if self.closing == LINGER:
                self.closing = CLOSE  # what we waited for: it has stopped sending
            return
        self._count_abandoned()
        if not self._owed:
            self.closing, self.end = CLOSE, "peer"  # nothing more can be asked; pending bytes still go out first
            if not self._unsent:
                self._final_at = now

    def respond(self, req: Request, resp: Response, now: float) -> bytes:
        """Decide keep-alive for REQ's response RESP, render it and return the bytes to write."""
        self._owed -= 1
        self.served += 1
        policy = self.policy
        n = policy._started()
        keep = req.keep_alive and policy._reuse and not resp.close
        if keep and ((self.peer_eof and not self._owed) or 0 < self.limits.max_requests <= n):
            keep = False
        out = render(resp, keep)
        if resp.after is not None:
            self._after.append((resp.after, now + self.limits.after_wait))
        if not keep:
            # Bytes may follow that we will not read (pipelined requests, a partial one): linger for them.
            unread = self._owed or self.parser.phase
            self.closing = LINGER if unread and not self.peer_eof else CLOSE
            self.end = "close"
        if not self._unsent:
            self._progress_at = now
        self._unsent += len(out)
        return out

    def refuse(self, err: HttpError, now: float) -> bytes:
        """Count a request the codec refused and return its reply; the connection then closes."""
        self._owed -= 1
        out = self._refusal(err, now, CLOSE if self.peer_eof else LINGER)
        self.end = "refused"
        return out

    def reject(self, now: float) -> bytes:
        """Turn a new connection away at admission (`Policy.admits` said no): a 503, counted here; then close.

        Its request is not parsed; the engine reads what the client sent before closing (closing over
        unread bytes makes the kernel send a reset, which can destroy the 503 before the client reads it).
        """
        out = self._refusal(BUSY_503, now, CLOSE)
        self.end = "busy"
        return out

    def sending(self, unsent: int, now: float) -> None:
        """UNSENT bytes of what respond()/refuse()/expire() returned are still waiting to leave; 0 = all gone.

        Call it after each write (sync engines: after send()/sendall; the loop: with the transport's
        write-buffer size after write() and from its sweep). Less than last time is progress.
        """
        if unsent:
            if unsent < self._unsent:
                self._progress_at = now
            self._unsent = unsent
            return
        self._unsent = 0
        self._free_at = now
        if self.closing and self._final_at < 0:
            self._final_at = now
        if self._after:
            self._run_after(now, everything=True)

    def abort(self, now: float) -> None:
        """The server gives up on this connection (a forced shutdown): nothing is counted against the client."""
        if not self._closed:
            if not self.end or not self.closing:
                self.end = "forced"
            self.closing = ABORT
            self._unsent = 0
            self.closed(now)

    def closed(self, now: float) -> None:
        """The socket is closed or reset (by us or the peer): count an abandoned request, run pending hooks."""
        if self._closed:
            return
        self._closed = True
        if not self.closing:
            self._count_abandoned()  # the peer vanished (reset, or FIN we had not seen) mid-request
            self.closing, self.end = CLOSE, "peer"
        ends = self.policy.ends
        ends[self.end] = ends.get(self.end, 0) + 1  # (a lost update between pool threads costs a count)
        if self._after:
            self._run_after(now, everything=True)

    # -- what to do ------------------------------------------------------------------------------------------
    def deadline(self) -> tuple[float, str]:
        """(when, kind): the moment the current wait expires (INF: none) and which deadline it is."""
        limits = self.limits
        if self._closed:
            return INF, ""
        if self._unsent:
            when, kind = self._progress_at + limits.send_timeout, SEND
        elif self.closing:
            if self.closing == LINGER and self._final_at >= 0:
                when, kind = self._final_at + limits.linger_s, LINGER_PHASE
            else:
                when, kind = INF, ""  # close/abort now: the engine's move
        elif self._owed:
            when, kind = INF, ""  # we are working; a hung handler is the master's --timeout business
        else:
            phase = self.parser.phase
            free = self._free_at
            if not phase:
                if self.served:
                    when, kind = free + limits.keepalive, IDLE
                    if self.policy.draining:
                        when = self.policy.drained_at  # the stop rule: an idle keep-alive one closes at once
                else:
                    when, kind = free + limits.header_timeout, NEW
            else:
                start = self._rx_start if self._rx_start > free else free
                when = start + limits.header_timeout
                if limits.min_rate:
                    when += self._rx_bytes / limits.min_rate
                    last = self._rx_last if self._rx_last > free else free
                    cap = last + limits.header_timeout
                    if when > cap:
                        when = cap
                kind = HEAD_PHASE if phase == HEAD else BODY_PHASE
        if self._after:
            due = self._after[0][1]
            if due < when:
                return due, AFTER
        return when, kind

    def timeout(self, now: float) -> float | None:
        """Seconds from NOW until the deadline (≥ 0), or None when there is none (block)."""
        when = self.deadline()[0]
        if when == INF:
            return None
        return when - now if when > now else 0.0

    def expire(self, now: float) -> Action | None:
        """Apply the deadline if it has passed: the Action for the engine, or None (nothing to do yet).

        An `after` deadline runs the hooks that waited long enough and returns None.
        """
        when, kind = self.deadline()
        if now < when:
            return None
        if kind == AFTER:
            self._run_after(now, everything=False)
            return None
        if kind in (NEW, IDLE):
            self.closing, self._final_at = CLOSE, now
            why = "silent" if kind == NEW else "idle"
            self.end = "stop-" + why if self.policy.draining else why
            return Action(kind, b"", CLOSE)
        if kind in (HEAD_PHASE, BODY_PHASE):
            reply = self._refusal(HEAD_TIMEOUT_408 if kind == HEAD_PHASE else BODY_TIMEOUT_408, now, CLOSE)
            self.end = "408"
            return Action(kind, reply, CLOSE)
        if kind == SEND:
            self.closing, self.end = ABORT, "send"
            self._unsent = 0
            if self._after:
                self._run_after(now, everything=True)  # those bytes will never leave
            return Action(kind, b"", ABORT)
        if kind == LINGER_PHASE:
            self.closing = CLOSE
            return Action(kind, b"", CLOSE)
        return None

    # -- questions the engines ask ------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing asked, nothing owed, nothing unsent: safe to close at once (shutdown, drain)."""
        return not (self._owed or self._unsent or self.closing or self.parser.phase)

    @property
    def lingering(self) -> bool:
        """True while the engine should keep reading and discarding (its write side shut down)."""
        return self.closing == LINGER and self._final_at >= 0 and not self._closed

    @property
    def unsent(self) -> int:
        return self._unsent

    # -- inside ------------------------------------------------------------------------------------------------
    def _refusal(self, err: HttpError, now: float, then: str) -> bytes:
        self.served += 1
        policy = self.policy
        policy._started()
        policy._count(err.status)
        self.closing = then
        if not self._unsent:
            self._progress_at = now
        out = render(error_response(err), False)
        self._unsent += len(out)
        return out

    def _count_abandoned(self) -> None:
        err = self.parser.eof()  # only once: the parser remembers it failed
        if err is not None:
            self.policy._count(err.status)

    def _run_after(self, now: float, everything: bool) -> None:
        due = [h for h in self._after if everything or h[1] <= now]
        self._after = [h for h in self._after if h not in due]
        for fn, _ in due:
            try:
                fn()
            except Exception:
                log.exception("Response.after hook failed")
