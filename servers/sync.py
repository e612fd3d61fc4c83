"""The sync engine: one process, one thread, one connection at a time (gunicorn's sync worker).

# What it owns
Everything of its process, and exactly one client at a time: it blocks in `accept()` on its listening
socket, then owns that connection — its socket, its parser, the handler running on its only thread —
until the response is out and the connection closed. It is the engine of `prefork` (the master forks N
of them, and they are the only thing that lets it serve N clients at once); it is never a model alone.

# How a request flows
accept → read with a deadline (`--header-timeout`) until the parser yields a request → `dispatch_sync`
on this thread (simulated I/O blocks the process; CPU work runs truly in parallel with the sibling workers)
→ one `sendall` → by default close (`--keepalive 0`: a sync worker waiting on an idle keep-alive connection
serves nobody else; set `--keepalive S` to watch other clients starve).

# What waiting costs it
Everything: a slow client, an idle keep-alive connection, a hung handler each hold the whole process.
Its one runner being busy is what the master watches (`busy_since` in its board slot): busy on one request
for longer than `--timeout` and the master kills it.

# Shutdown
SIGTERM: an idle engine leaves `accept()` at once; a busy one finishes its request (the response says
`Connection: close`) and then leaves. SIGINT/SIGQUIT: leave at once. `--max-requests`: after that many
requests it returns EXIT_RECYCLED and the master forks a fresh one.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time

from webmodels import codec
from webmodels.app import dispatch_sync, refuse
from webmodels.config import Config
from webmodels.exitcodes import EXIT_RECYCLED
from webmodels.listen import EXPECTED_NET_ERRORS
from webmodels.log import log
from webmodels.runtime import Runtime


class _Stop(Exception):
    """Raised by the SIGTERM handler to break out of a blocking accept()/recv()."""


class SyncEngine:
    def __init__(self, config: Config, sock: socket.socket, rt: Runtime, max_requests: int = 0) -> None:
        self.config, self.sock, self.rt, self.max_requests = config, sock, rt, max_requests
        self.alive = True
        self.busy = False
        rt.runners = 1

    def _on_term(self, signum: int, frame: object) -> None:
        self.alive = False
        if not self.busy:
            raise _Stop()  # interrupt accept()/recv() now; a busy engine finishes its request first

    def run(self) -> int:
        """Serve until told to stop; return the exit status (0, or EXIT_RECYCLED)."""
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, lambda *_: os._exit(0))
        signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))
        self.sock.setblocking(True)
        while self.alive:
            try:
                conn, _ = self.sock.accept()
            except _Stop:
                return 0
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EMFILE, errno.ENFILE):
                    continue
                raise
            self.rt.connection_accepted()
            try:
                self.serve(conn)
            except _Stop:
                pass
            finally:
                _close(conn)
            if self._recycle_due():
                return EXIT_RECYCLED
        return 0

    def _recycle_due(self) -> bool:
        return bool(self.max_requests) and self.rt.requests_here() >= self.max_requests

    def serve(self, conn: socket.socket) -> None:
        """Serve one connection: one request, or several with --keepalive, then return (caller closes)."""
        parser = codec.RequestParser()
        cfg = self.config
        deadline = time.monotonic() + cfg.header_timeout
        while True:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return self._timed_out(conn, parser)
            conn.settimeout(timeout)
            try:
                data = conn.recv(65536)
            except socket.timeout:
                return self._timed_out(conn, parser)
            except OSError as exc:
                if exc.errno in EXPECTED_NET_ERRORS:
                    log.debug("client went away: %s", exc)
                    return None
                raise
            if not data:
                err = parser.eof()
                if err:
                    self.rt.request_finished(err.status, started=False)
                return None
            was_idle = parser.idle
            for event in parser.feed(data):
                if isinstance(event, codec.HttpError):
                    return self._send(conn, refuse(event, self.rt))
                self.busy = True  # from here until the reply is out, SIGTERM waits for us
                resp = dispatch_sync(event, self.rt)
                keep = (event.keep_alive and not resp.close and cfg.keepalive > 0 and self.alive
                        and not self._recycle_due())
                try:
                    sent = self._send(conn, codec.render(resp, keep))
                    if resp.after is not None:
                        resp.after()
                finally:
                    self.busy = False
                if not keep or sent is False:
                    return None
                deadline = time.monotonic() + cfg.keepalive
            if was_idle and not parser.idle:
                # a new request began: the client now has --header-timeout to finish its head
                deadline = time.monotonic() + cfg.header_timeout

    def _timed_out(self, conn: socket.socket, parser: codec.RequestParser) -> None:
        if parser.in_head:
            self._send(conn, refuse(codec.TIMEOUT_408, self.rt))

    def _send(self, conn: socket.socket, data: bytes) -> bool:
        try:
            conn.settimeout(self.config.header_timeout)  # a client that never reads must not pin us
            conn.sendall(data)
            return True
        except OSError as exc:
            if isinstance(exc, socket.timeout) or exc.errno in EXPECTED_NET_ERRORS:
                log.debug("send failed: %s", exc)
                return False
            raise


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_WR)  # FIN after the response, so unread input cannot turn it into a RST
    except OSError:
        pass
    conn.close()


def run(config: Config, sock: socket.socket, rt: Runtime, max_requests: int = 0) -> int:
    """Run the sync engine on SOCK until a stop signal (or --max-requests); return the exit status."""
    return SyncEngine(config, sock, rt, max_requests).run()
