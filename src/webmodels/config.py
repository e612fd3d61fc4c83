"""Server configuration: flags, their environment variables, per-model defaults and validation.

Every flag of `webmodels serve` can also come from `WEBMODELS_<FLAG>` (dashes become underscores) so a
container can be configured without a command line. A flag given for a model it makes no sense for is an
error, never silently ignored: an attendee who passes `--workers 8` to the event loop must learn that the
event loop has no workers, not wonder why nothing changed.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

MODELS = ("threadpool", "prefork", "eventloop")
ENV_PREFIX = "WEBMODELS_"


class ConfigError(ValueError):
    """A flag or environment variable has a bad value or does not apply to the model."""


@dataclass(frozen=True)
class Option:
    name: str  # attribute name; the flag is --name-with-dashes
    kind: type  # int, float, str or bool
    help: str
    models: tuple[str, ...] = MODELS  # the models the option applies to
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("bind", str, "HOST:PORT to listen on (port 0 picks a free port)"),
    Option("workers", int, "prefork worker processes", ("prefork",), 1, 64),
    Option("threads", int, "thread-pool size", ("threadpool",), 1, 4096),
    Option("queue", int, "connections waiting for a free thread before new ones get a fast 503",
           ("threadpool",), 0, 65536),
    Option("timeout", float, "kill a worker busy on one request for longer than S seconds (0 = never)",
           ("prefork",), 0, 86400),
    Option("graceful_timeout", float, "on SIGTERM, let in-flight requests finish for up to S seconds",
           MODELS, 0, 3600),
    Option("max_requests", int, "recycle a worker after N requests (0 = never)", ("prefork",), 0, 10**9),
    Option("max_requests_jitter", int, "add 0..N to --max-requests per worker so they do not recycle "
           "together", ("prefork",), 0, 10**9),
    Option("keepalive", float, "idle keep-alive timeout in seconds (0 = close after each response)",
           MODELS, 0, 3600),
    Option("header_timeout", float, "seconds a client may take to send a whole request head (→ 408)",
           MODELS, 0.1, 3600),
    Option("send_timeout", float, "abort a connection whose response makes no progress for S seconds (a "
           "client that does not read)", MODELS, 0.1, 3600),
    Option("min_rate", float, "each byte of a request head or body received extends its deadline by "
           "1/BYTES_PER_S seconds (0 = off; as Apache mod_reqtimeout's MinRate)", MODELS, 0, 10**9),
    Option("faults", bool, "enable the /fault/* routes and POST /_lab/kill"),
    Option("access_log", bool, "log one line per request"),
    Option("loop", str, "event loop implementation", ("eventloop",), choices=("uvloop", "asyncio")),
    Option("watchdog", float, "exit when the loop stalls longer than S seconds so a supervisor restarts "
           "it (0 = off)", ("eventloop",), 0, 3600),
    Option("gc_freeze", bool, "call gc.freeze() in the master before forking (keeps copy-on-write pages "
           "shared)", ("prefork",)),
    Option("backlog", int, "listen backlog", MODELS, 1, 65535),
)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}

# Defaults per model. Prefork closes after each response by default, as gunicorn's sync worker does:
# a sync worker holding an idle keep-alive connection serves nobody else.
DEFAULTS: dict[str, Any] = {
    "bind": "127.0.0.1:8000",
    "workers": 4,
    "threads": 32,
    "queue": None,  # None → same as threads
    "timeout": 30.0,
    "graceful_timeout": 30.0,
    "max_requests": 0,
    "max_requests_jitter": 0,
    "keepalive": 5.0,
    "header_timeout": 10.0,
    "send_timeout": 30.0,
    "min_rate": 0.0,
    "faults": False,
    "access_log": False,
    "loop": "uvloop",
    "watchdog": 0.0,
    "gc_freeze": False,
    "backlog": 2048,
}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"prefork": {"keepalive": 0.0}}


@dataclass
class Config:
    model: str
    bind: str = DEFAULTS["bind"]
    workers: int = 4
    threads: int = 32
    queue: int = 32
    timeout: float = 30.0
    graceful_timeout: float = 30.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    keepalive: float = 5.0
    header_timeout: float = 10.0
    send_timeout: float = 30.0
    min_rate: float = 0.0
    faults: bool = False
    access_log: bool = False
    loop: str = "uvloop"
    watchdog: float = 0.0
    gc_freeze: bool = False
    backlog: int = 2048
    explicit: frozenset[str] = field(default_factory=frozenset)  # options the user set

    @property
    def host(self) -> str:
        return split_bind(self.bind)[0]

    @property
    def port(self) -> int:
        return split_bind(self.bind)[1]

    def effective(self) -> dict[str, Any]:
        """Return the options that apply to this model, for the start-up line and /_lab/stats."""
        out: dict[str, Any] = {}
        for opt in OPTIONS:
            if self.model in opt.models:
                out[opt.name] = getattr(self, opt.name)
        return out

    def to_env(self) -> dict[str, str]:
        """Return WEBMODELS_* variables that reproduce this config (for child processes)."""
        env = {ENV_PREFIX + "MODEL": self.model}
        for name, value in self.effective().items():
            opt = OPTION_BY_NAME[name]
            env[opt.env] = ("1" if value else "0") if opt.kind is bool else str(value)
        return env


def split_bind(bind: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT) into host and port."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--bind: expected HOST:PORT, got {bind!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    p = int(port)
    if not 0 <= p <= 65535:
        raise ConfigError(f"--bind: port {p} is out of range 0-65535")
    return host, p


def _parse(opt: Option, raw: Any, source: str) -> Any:
    if opt.kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{source}: expected 1/0, true/false, yes/no; got {raw!r}")
    if opt.kind in (int, float):
        try:
            value = opt.kind(raw)
        except (TypeError, ValueError):
            kind = "an integer" if opt.kind is int else "a number"
            raise ConfigError(f"{source}: expected {kind}, got {raw!r}") from None
        if (opt.lo is not None and value < opt.lo) or (opt.hi is not None and value > opt.hi):
            raise ConfigError(f"{source}: {value} is out of range {opt.lo:g}-{opt.hi:g}")
        return value
    value = str(raw)
    if opt.choices and value not in opt.choices:
        raise ConfigError(f"{source}: expected one of {', '.join(opt.choices)}; got {value!r}")
    return value


def build_config(model: str, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Merge defaults ← environment ← flags for MODEL and reject options that do not apply to it.

    `flags` maps option names to values given on the command line (None = not given).
    """
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}: expected one of {', '.join(MODELS)}")
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = dict(DEFAULTS)
    values.update(MODEL_DEFAULTS.get(model, {}))
    explicit: set[str] = set()
    for opt in OPTIONS:
        raw, source = None, ""
        if flags.get(opt.name) is not None:
            raw, source = flags[opt.name], opt.flag
        elif environ.get(opt.env) not in (None, ""):
            raw, source = environ[opt.env], f"{opt.env} (environment)"
        if raw is None:
            continue
        if model not in opt.models:
            applies = ", ".join(opt.models)
            raise ConfigError(f"{source} does not apply to the {model} model (only to: {applies})")
        values[opt.name] = _parse(opt, raw, source)
        explicit.add(opt.name)
    if values["queue"] is None:
        values["queue"] = values["threads"]
    split_bind(values["bind"])  # validate early, with the flag's name in the message
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(model=model, explicit=frozenset(explicit), **{k: v for k, v in values.items() if k in names})
