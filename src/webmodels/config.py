"""Server configuration: flags, their environment variables, per-model defaults and validation.

Every flag of `webmodels serve` can also come from `WEBMODELS_<FLAG>` (dashes become underscores) so a
container can be configured without a command line. A flag given for a model it makes no sense for is an
error, never silently ignored: an attendee who passes `--workers 8` to the event loop must learn that the
event loop has no workers, not wonder why nothing changed.

Five served names, three ways of waiting ("engines"): `threadpool` is the threads engine alone, `eventloop`
the loop engine alone; `prefork`, `hybrid-threads` and `hybrid-loop` are a master over workers that each
run one engine (`--engine sync|threads|loop`; the hybrids are prefork with `threads`/`loop` preset). A
thread flag applies wherever the threads engine runs, a loop flag wherever the loop engine runs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

MODELS = ("threadpool", "prefork", "eventloop", "hybrid-threads", "hybrid-loop")
MASTER_MODELS = ("prefork", "hybrid-threads", "hybrid-loop")  # a master and worker processes
ENGINES = ("sync", "threads", "loop")
# The engine each name runs; prefork's is its --engine flag (default sync).
MODEL_ENGINE = {"threadpool": "threads", "eventloop": "loop", "prefork": "sync", "hybrid-threads": "threads",
                "hybrid-loop": "loop"}
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
    engines: tuple[str, ...] = ()  # also applies to the master models whose workers run one of these engines
    hidden: bool = False  # set by tools through the environment only: no flag, not in the effective config

    def applies(self, model: str, engine: str) -> bool:
        return model in self.models or (model in MASTER_MODELS and engine in self.engines)

    def where(self) -> str:
        """Say where the option applies, for error messages and --help."""
        if self.models == MODELS:
            return "every model"
        if not self.engines:
            return ", ".join(self.models)
        names = [m for m in self.models if m not in MASTER_MODELS]
        names += [m for m in MASTER_MODELS if m != "prefork" and MODEL_ENGINE[m] in self.engines]
        return f"{', '.join(names)}, or prefork with --engine {'|'.join(self.engines)}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("bind", str, "HOST:PORT to listen on (port 0 picks a free port)"),
    Option("engine", str, "how each worker waits: sync (one connection at a time), threads (a pool), loop "
           "(uvloop)", MASTER_MODELS, choices=ENGINES),
    Option("workers", int, "worker processes", MASTER_MODELS, 1, 64),
    Option("threads", int, "thread-pool size", ("threadpool",), 1, 4096, engines=("threads",)),
    Option("queue", int, "new connections waiting for their first turn (no thread free) before the next new one "
           "gets a fast 503", ("threadpool",), 0, 65536, engines=("threads",)),
    Option("timeout", float, "kill a worker that is stuck for longer than S seconds (0 = never): sync busy on one "
           "request, threads all busy, loop not ticking", MASTER_MODELS, 0, 86400),
    Option("graceful_timeout", float, "on SIGTERM, let in-flight requests finish for up to S seconds",
           MODELS, 0, 3600),
    Option("max_requests", int, "recycle a worker after N requests (0 = never)", MASTER_MODELS, 0, 10**9),
    Option("max_requests_jitter", int, "add 0..N to --max-requests per worker so they do not recycle "
           "together", MASTER_MODELS, 0, 10**9),
    Option("keepalive", float, "idle keep-alive timeout in seconds (0 = close after each response)",
           MODELS, 0, 3600),
    Option("header_timeout", float, "seconds a client may take to send a whole request head (→ 408)",
           MODELS, 0.1, 3600),
    Option("send_timeout", float, "abort a connection whose response makes no progress for S seconds (a "
           "client that does not read)", MODELS, 0.1, 3600),
    Option("min_rate", float, "each byte of a request head or body received extends its deadline by "
           "1/BYTES_PER_S seconds, up to --header-timeout after the last byte (0 = off; as Apache mod_reqtimeout's "
           "MinRate). It only ever lengthens a deadline: alone it cuts a client slower than the rate at about "
           "--header-timeout (a 1 B/s trickler at 10.1 s with the default 10 s and --min-rate 100: of 100 "
           "tricklers on the event loop, 0 cut in the first 10 s, 100 in 20 s). To cut them sooner, lower "
           "--header-timeout (2: 200 cuts in 10 s, each trickler at 2.02 s after it connects); --min-rate then "
           "spares a big head or body that keeps coming at BYTES_PER_S or faster", MODELS, 0, 10**9),
    Option("faults", bool, "enable the /fault/* routes and POST /_lab/kill"),
    Option("access_log", bool, "log one line per request"),
    Option("loop", str, "event loop implementation", ("eventloop",), choices=("uvloop", "asyncio"),
           engines=("loop",)),
    Option("watchdog", float, "exit when the loop stalls longer than S seconds so a supervisor restarts "
           "it (0 = off; under a master, --timeout does this)", ("eventloop",), 0, 3600),
    Option("gc_freeze", bool, "call gc.freeze() in the master before forking (keeps copy-on-write pages "
           "shared)", MASTER_MODELS),
    Option("reuseport", bool, "each worker opens its own SO_REUSEPORT listener (the kernel spreads "
           "connections) instead of sharing the master's", MASTER_MODELS),
    Option("backlog", int, "listen backlog", MODELS, 1, 65535),
    # Set by the native lab supervisor (`webmodels up`) each time it restarts the server; shown in /_lab/stats.
    Option("restarts", int, "restarts so far, as counted by the supervisor", MODELS, 0, 10**9, hidden=True),
)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}

# Defaults per model. Prefork closes after each response by default, as gunicorn's sync worker does:
# a sync worker holding an idle keep-alive connection serves nobody else.
DEFAULTS: dict[str, Any] = {
    "bind": "127.0.0.1:8000",
    "engine": None,  # None → the model's own (MODEL_ENGINE)
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
    "reuseport": False,
    "backlog": 2048,
    "restarts": None,
}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "hybrid-threads": {"workers": 2, "threads": 16},
    "hybrid-loop": {"workers": 2},
}
# A sync worker holding an idle keep-alive connection serves nobody else (as in gunicorn's sync worker).
ENGINE_DEFAULTS: dict[str, dict[str, Any]] = {"sync": {"keepalive": 0.0}}


@dataclass
class Config:
    model: str
    bind: str = DEFAULTS["bind"]
    engine: str = "sync"  # resolved for every model: threadpool → threads, eventloop → loop
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
    reuseport: bool = False
    backlog: int = 2048
    restarts: int | None = None
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
            if opt.applies(self.model, self.engine) and not opt.hidden:
                out[opt.name] = getattr(self, opt.name)
        return out


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
    raws: dict[str, tuple[Any, str]] = {}
    for opt in OPTIONS:
        if flags.get(opt.name) is not None:
            raws[opt.name] = flags[opt.name], opt.flag
        elif environ.get(opt.env) not in (None, ""):
            raws[opt.name] = environ[opt.env], f"{opt.env} (environment)"
    engine = MODEL_ENGINE[model]
    if "engine" in raws:  # first, because which other options apply depends on it
        raw, source = raws["engine"]
        if model != "prefork" and model in MASTER_MODELS:
            raise ConfigError(f"{source} does not apply to the {model} model (its engine is {engine}; "
                              f"use prefork --engine ENGINE to choose)")
        if model in MASTER_MODELS:
            engine = _parse(OPTION_BY_NAME["engine"], raw, source)
    values: dict[str, Any] = dict(DEFAULTS)
    if model in MASTER_MODELS:
        values.update(ENGINE_DEFAULTS.get(engine, {}))
    values.update(MODEL_DEFAULTS.get(model, {}))
    values["engine"] = engine
    explicit: set[str] = set()
    for opt in OPTIONS:
        if opt.name not in raws:
            continue
        raw, source = raws[opt.name]
        if not opt.applies(model, engine):
            what = f"the {model} model" + (f" with --engine {engine}" if model == "prefork"
                                           else f" (engine {engine})" if model in MASTER_MODELS else "")
            raise ConfigError(f"{source} does not apply to {what} (it applies to {opt.where()})")
        values[opt.name] = _parse(opt, raw, source)
        explicit.add(opt.name)
    if values["queue"] is None:
        values["queue"] = values["threads"]
    split_bind(values["bind"])  # validate early, with the flag's name in the message
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(model=model, explicit=frozenset(explicit), **{k: v for k, v in values.items() if k in names})
