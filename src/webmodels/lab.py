"""The lab's settings, in one place for `webmodels up`, `status`, `kill` and the bench.

The per-server settings live in `lab/<model>.env` (KEY=VALUE lines), read both by docker-compose.yml
(`env_file:`) and by the native launcher, so the two can never drift apart. Only the bind address differs:
each launcher sets it (compose binds 0.0.0.0 inside its container and publishes on 127.0.0.1).
"""

from __future__ import annotations

import os
from pathlib import Path

LAB_PORTS = {"threadpool": 8001, "prefork": 8002, "eventloop": 8003}
LOCUST_PORT = 8089
URL_ENV = {model: f"WEBMODELS_{model.upper()}_URL" for model in LAB_PORTS}  # read by the locustfile


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


def server_env(model: str, host: str = "127.0.0.1", offset: int = 0) -> dict[str, str]:
    """The environment a lab server runs with: lab/<model>.env plus its bind address."""
    env = read_env_file(project_root() / "lab" / f"{model}.env")
    env["WEBMODELS_BIND"] = f"{host}:{LAB_PORTS[model] + offset}"
    return env


def server_url(model: str, host: str = "127.0.0.1", offset: int = 0) -> str:
    """Where MODEL answers; OFFSET shifts every lab port (a second lab, or tests beside a running one)."""
    return f"http://{host}:{LAB_PORTS[model] + offset}"
