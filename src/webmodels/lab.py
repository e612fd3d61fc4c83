"""The lab's servers, in one table, and the lab's settings for `webmodels up`, `status`, `kill` and the bench.

SERVERS is the one list of the lab's servers (one table per fact): each row says the port, the settings file,
the Locust user class, the environment variable holding its URL, whether a master supervises workers and
which engine serves. Everything that lists the servers reads it: the native supervisor, status/kill/scale,
the actions layer, the locustfile (its user classes are made from it), the Servers tab and its charts,
Prometheus's scrape config and the tests. Adding a server is one row here, its `lab/<name>.env` and its
service in docker-compose.yml (tests/test_unit_compose_files.py checks that the compose files name every row).

The per-server settings live in `lab/<model>.env` (KEY=VALUE lines), read both by docker-compose.yml
(`env_file:`) and by the native launcher, so the two can never drift apart. Only the bind address differs:
each launcher sets it (compose binds 0.0.0.0 inside its container and publishes on 127.0.0.1).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import config


@dataclass(frozen=True)
class LabServer:
    """One lab server: NAME (a model of `webmodels serve`) on PORT, loaded by Locust's USER_CLASS."""

    name: str
    port: int
    user_class: str
    color: str  # its line in the Servers tab's charts
    label: str = ""  # how people call it ("thread pool"); the name when empty

    @property
    def env_file(self) -> str:
        """Its settings file, relative to the project root (read by compose and `webmodels up`)."""
        return f"lab/{self.name}.env"

    @property
    def url_env(self) -> str:
        """The variable holding its URL for Locust: WEBMODELS_HYBRID_LOOP_URL for hybrid-loop."""
        return "WEBMODELS_" + self.name.upper().replace("-", "_") + "_URL"

    @property
    def master(self) -> bool:
        """True if a master supervises worker processes (`kill --worker`, `scale`, per-worker stats apply)."""
        return self.name in config.MASTER_MODELS

    @property
    def engine(self) -> str:
        """How its workers (or its one process) wait: sync, threads, loop or gevent."""
        return config.MODEL_ENGINE[self.name]

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


SERVERS: dict[str, LabServer] = {s.name: s for s in (
    LabServer("threadpool", 8001, "ThreadpoolUser", "#1f77b4", "thread pool"),
    LabServer("prefork", 8002, "PreforkUser", "#2ca02c"),
    LabServer("eventloop", 8003, "EventloopUser", "#d62728", "event loop"),
    LabServer("hybrid-threads", 8004, "HybridThreadsUser", "#9467bd"),
    LabServer("hybrid-loop", 8005, "HybridLoopUser", "#ff7f0e"),
    LabServer("greenthreads", 8006, "GreenthreadsUser", "#8c564b", "green threads"),
)}

# Views of the table, for the many readers that need one column.
LAB_PORTS = {name: s.port for name, s in SERVERS.items()}
MASTER_MODELS: tuple[str, ...] = tuple(name for name, s in SERVERS.items() if s.master)
URL_ENV = {name: s.url_env for name, s in SERVERS.items()}  # read by the locustfile
LOCUST_PORT = 8089


def url_env(model: str) -> str:
    """The environment variable holding MODEL's URL for Locust: WEBMODELS_HYBRID_LOOP_URL for hybrid-loop."""
    return SERVERS[model].url_env


def project_root() -> Path:
    """The checkout (or image) directory holding lab/ and loadtest/."""
    env = os.environ.get("WEBMODELS_ROOT")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "lab").is_dir() and (parent / "loadtest").is_dir():
            return parent
    return Path.cwd()


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines as docker-compose does for env_file (no quotes, # comments)."""
    env: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{lineno}: expected KEY=VALUE, got {line!r}")
        env[key.strip()] = value.strip()
    return env


def _run_file(kind: str, offset: int, suffix: str) -> Path:
    return Path(tempfile.gettempdir()) / f"webmodels-{kind}-{os.getuid()}-{LOCUST_PORT + offset}.{suffix}"


def supervisor_state_path(offset: int = 0) -> Path:
    """Where `webmodels up` (with this port offset) keeps its JSON state for `status` and the Servers tab."""
    return _run_file("up", offset, "json")


def events_path(offset: int = 0) -> Path:
    """Where `webmodels up` (with this port offset) has every fault and kill recorded (webmodels.events)."""
    return _run_file("events", offset, "jsonl")


def server_env(model: str, host: str = "127.0.0.1", offset: int = 0) -> dict[str, str]:
    """The environment a lab server runs with: lab/<model>.env plus its bind address."""
    env = read_env_file(project_root() / SERVERS[model].env_file)
    env["WEBMODELS_BIND"] = f"{host}:{SERVERS[model].port + offset}"
    return env


def server_url(model: str, host: str = "127.0.0.1", offset: int = 0) -> str:
    """Where MODEL answers; OFFSET shifts every lab port (a second lab, or tests beside a running one)."""
    return f"http://{host}:{SERVERS[model].port + offset}"
