"""A raw HTTP/1.1 client for tests: exactly the bytes we choose on the wire, responses read one by one."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class Conn:
    """One TCP connection to HOST:PORT on loopback, with a short timeout on every operation."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
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
        self.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())

    def read_reply(self) -> Reply:
        """Read exactly one response (bytes after it stay buffered for the next call)."""
        reply, self.buf = read_one(self.sock, self.buf)
        return reply

    def read_eof(self) -> bool:
        """True if the server closes the connection (EOF or reset) with nothing more to say."""
        try:
            rest = self.buf or self.sock.recv(65536)
        except ConnectionResetError:
            return True
        return rest == b""


def read_one(sock: socket.socket, buf: bytes) -> tuple[Reply, bytes]:
    """Parse one response from BUF + whatever SOCK sends; return it and the bytes that follow it.

    Every response of these servers carries Content-Length, so that is all the framing we need.
    """
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            end = head_end + 4 + length
            if len(buf) >= end:
                status = int(head[0].split(" ", 2)[1])
                return Reply(status, headers, buf[head_end + 4:end]), buf[end:]
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a complete response (got {buf[:200]!r})")
        buf += chunk
