"""What the handler may ask of the model running it: counters, the process tree, killing workers.

Each server passes one `Runtime` to the handler. This base class keeps counters in the process's own
memory (enough for the thread pool and the event loop, which are one process); the prefork server
subclasses it to keep them in shared memory so any worker can report the whole server.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from .config import Config


class Runtime:
    model = "?"
    role = "main"
    worker_index: int | None = None
    metrics: Any = None  # hook: the process's metrics.Metrics, made on first use by webmodels.metrics

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        # A lock, not bare `+=`: the pool's threads update these concurrently and the numbers are the product.
        self._lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.errors_4xx = 0
        self.errors_5xx = 0

    # -- accounting -----------------------------------------------------------------------------------------
    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_finished(self, status: int, started: bool = True) -> None:
        with self._lock:
            if started:
                self.in_flight -= 1
            self.requests += 1
            if 400 <= status < 500:
                self.errors_4xx += 1
            elif status >= 500:
                self.errors_5xx += 1

    def requests_here(self) -> int:
        return self.requests

    def counters(self) -> dict[str, Any]:
        return {"requests": self.requests, "in_flight": self.in_flight,
                "errors_4xx": self.errors_4xx, "errors_5xx": self.errors_5xx}

    # -- the process tree ------------------------------------------------------------------------------------
    def process_roles(self) -> dict[int, str]:
        return {os.getpid(): "main"}

    def server_pid(self) -> int:
        """The pid whose death is the server's death (the master for prefork)."""
        return os.getpid()

    # -- kills --------------------------------------------------------------------------------------------------
    def worker_pids(self) -> list[int]:
        return []

    def scale(self, delta: int) -> int | None:
        """Change the number of workers by DELTA; return the new target (None: the model has no workers)."""
        return None

    def kill_process(self) -> None:
        """Kill the whole server at once, as `kill -9` would."""
        os.kill(os.getpid(), signal.SIGKILL)
