"""--timeline DIR: one JSONL record per request, one file per Locust process (no locking between processes).

A record: `t` (epoch seconds, when it was sent), `server`, `name`, `ok`, `class` (accounting's ok / expected /
collateral), `error`, `ms`, and for an injected fault its kind (`fault`, a key of webmodels.faults' table).
Plain Python: the bench reads timelines back with `read` (Locust is never imported there).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any


class Timeline:
    """Append request records to DIR/<role>-<pid>.jsonl while open."""

    def __init__(self) -> None:
        self.file: IO[str] | None = None
        self.path = ""

    def open(self, directory: str, role: str) -> None:
        self.close()
        if not directory:
            return
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{role}-{os.getpid()}.jsonl")
        self.file = open(self.path, "a", encoding="utf-8", buffering=1 << 16)

    def write(self, start: float, server: str, name: str, ok: bool, kind: str, error: str | None,
              ms: float, fault: str | None = None) -> None:
        if self.file is not None:
            record = {"t": round(start, 6), "server": server, "name": name, "ok": ok, "class": kind, "error": error,
                      "ms": round(ms, 3)}
            if fault:
                record["fault"] = fault
            self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def read(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of every process's file in DIRECTORY, sorted by send time."""
    records = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return sorted(records, key=lambda r: r["t"])
