"""--timeline DIR: one JSONL record per request, one file per Locust process (no locking between processes)."""

from __future__ import annotations

import json
import os
from typing import IO


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
              ms: float) -> None:
        if self.file is not None:
            self.file.write(json.dumps({"t": round(start, 6), "server": server, "name": name, "ok": ok,
                                        "class": kind, "error": error, "ms": round(ms, 3)}) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
