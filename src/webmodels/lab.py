"""The lab's settings, in one place for `webmodels up`, `status`, `kill` and the bench.

The per-server settings live in `lab/<model>.env` (KEY=VALUE lines), read both by docker-compose.yml
(`env_file:`) and by the native launcher, so the two can never drift apart. Only the bind address differs:
each launcher sets it (compose binds 0.0.0.0 inside its container and publishes on 127.0.0.1).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from . import config

LAB_PORTS = {"threadpool": 8001, "prefork": 8002, "eventloop": 8003, "hybrid-threads": 8004, "hybrid-loop": 8005}
LOCUST_PORT = 8089
# The models with a master and worker processes: `kill --worker`, `scale` and per-worker stats apply to them.
MASTER_MODELS = config.MASTER_MODELS


def url_env(model: str) -> str:
    """The environment variable holding MODEL's URL for Locust: WEBMODELS_HYBRID_LOOP_URL for hybrid-loop."""
    return "WEBMODELS_" + model.upper().replace("-", "_") + "_URL"


URL_ENV = {model: url_env(model) for model in LAB_PORTS}  # read by the locustfile


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


def supervisor_state_path(offset: int = 0) -> Path:
    """Where `webmodels up` (with this port offset) keeps its JSON state for `status` and the Servers tab."""
    return Path(tempfile.gettempdir()) / f"webmodels-up-{os.getuid()}-{LOCUST_PORT + offset}.json"


def server_env(model: str, host: str = "127.0.0.1", offset: int = 0) -> dict[str, str]:
    """The environment a lab server runs with: lab/<model>.env plus its bind address."""
    env = read_env_file(project_root() / "lab" / f"{model}.env")
    env["WEBMODELS_BIND"] = f"{host}:{LAB_PORTS[model] + offset}"
    return env


def server_url(model: str, host: str = "127.0.0.1", offset: int = 0) -> str:
    """Where MODEL answers; OFFSET shifts every lab port (a second lab, or tests beside a running one)."""
    return f"http://{host}:{LAB_PORTS[model] + offset}"
