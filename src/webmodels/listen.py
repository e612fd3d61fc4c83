"""The listening socket and the start-up line that says where it is (launch.Process reads it), alike in every model."""

from __future__ import annotations

import errno
import json
import os
import re
import socket

from .config import Config
from .log import log

# Errors that mean "the client went away": expected under load and under chaos, never worth a traceback.
EXPECTED_NET_ERRORS = (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.ENOTCONN,
                       errno.EBADF, errno.ESHUTDOWN)


class PortInUse(OSError):
    pass


def make_listener(config: Config, *, port: int | None = None, reuseport: bool = False,
                  listen: bool = True) -> socket.socket:
    """Bind (and listen on) config.bind, or on PORT instead of its port; a busy port is an error naming it.

    REUSEPORT: set SO_REUSEPORT, so several sockets (one per worker) can listen on the same address and
    the kernel spreads new connections across them. LISTEN False: bind only — holds the address (and
    learns the port the kernel picked for port 0) without ever receiving a connection.
    """
    host, port = config.host, config.port if port is None else port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(exc.errno, f"port {port} on {host} is already in use") from None
        raise
    if listen:
        sock.listen(config.backlog)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# What launch.Process looks for in a server's log to learn its bound address (port 0 → real port).
LISTEN_RE = re.compile(r"listening on http://(\S+)")


def log_startup(config: Config, sock: socket.socket, detail: str = "") -> None:
    """The one start-up line: model, pid, bound address, effective config."""
    log.info("webmodels %s pid=%d listening on http://%s%s config=%s", config.model, os.getpid(),
             address(sock), f" {detail}" if detail else "", json.dumps(config.effective(), sort_keys=True))
