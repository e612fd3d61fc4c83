"""A raw HTTP/1.1 client for tests: exactly the bytes we choose on the wire, responses read one by one."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        """The reply says `Connection: close`."""
        return self.headers.get("connection") == "close"


def request(target: str, extra: str = "") -> bytes:
    """The bytes of `GET TARGET` with EXTRA header lines (each ending in CRLF)."""
    return f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def parse_reply(data: bytes) -> tuple[Reply, bytes] | None:
    """The first complete response in DATA and the bytes after it; None while it is incomplete.

    Every response of these servers carries Content-Length, so that is all the framing we need (but a kill's,
    which ends with its connection: reply_until_close).
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    status, headers = _head(data[:head_end])
    end = head_end + 4 + int(headers.get("content-length", "0"))
    if len(data) < end:
        return None
    return Reply(status, headers, data[head_end + 4:end]), data[end:]


def _head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split(" ", 2)[1]), headers


def _content_length(head: bytes) -> int:
    return int(_head(head)[1].get("content-length", "0"))


def parse_replies(data: bytes) -> list[Reply]:
    """Every complete response in DATA."""
    out = []
    while (parsed := parse_reply(data)) is not None:
        reply, data = parsed
        out.append(reply)
    return out


class Address(Protocol):
    host: str
    port: int


class Conn:
    """One TCP connection to a server on loopback, with a timeout on every operation (RCVBUF: a small fixed
    receive buffer, set before connecting, so the kernel's autotuning cannot absorb what the client leaves unread)."""

    def __init__(self, srv: Address, timeout: float = 5.0, rcvbuf: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect((srv.host, srv.port))
        except OSError:
            self.sock.close()
            raise
        self.buf = b""

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, target: str, extra: str = "") -> None:
        """Send `GET TARGET` (not waiting for the reply: pipeline more, or read_reply())."""
        self.send(request(target, extra))

    def call(self, target: str, extra: str = "") -> Reply:
        """GET TARGET and read its reply."""
        self.get(target, extra)
        return self.read_reply()

    def read_reply(self) -> Reply:
        """Read exactly one response (bytes after it stay buffered for the next call)."""
        while (head_end := self.buf.find(b"\r\n\r\n")) < 0:
            self.buf += self._recv()
        want = head_end + 4 + _content_length(self.buf[:head_end])
        chunks, have = [self.buf], len(self.buf)
        while have < want:  # a large body: collect the pieces, join once
            chunks.append(self._recv())
            have += len(chunks[-1])
        reply, self.buf = parse_reply(b"".join(chunks))  # type: ignore[misc]
        return reply

    def _recv(self) -> bytes:
        chunk = self.sock.recv(256 * 1024)
        if not chunk:
            raise ConnectionError(f"connection closed before a complete response (got {self.buf[:200]!r})")
        return chunk

    def closed(self, timeout: float | None = None) -> bytes | None:
        """Wait (up to TIMEOUT, else the connection's own) for the server to close: the bytes it sent before its
        close (b"": closed without a word; a reset counts as a close), or None if it is still open."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        data, self.buf = self.buf, b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except socket.timeout:
            return None
        except ConnectionResetError:
            pass
        return data


def reply_until_close(srv: Address, method: str, target: str, timeout: float = 5.0) -> Reply:
    """Send METHOD TARGET and read everything until the server closes (a reply framed by its close, a kill's)."""
    with Conn(srv, timeout) as c:
        c.send(f"{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".encode())
        data = c.closed()
    assert data, f"{method} {target}: closed without a reply"
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = _head(head)
    return Reply(status, headers, body)
