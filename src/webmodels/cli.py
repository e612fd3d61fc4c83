"""`webmodels` — the composition root: the only module that knows every model and every tool."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

from .config import MASTER_MODELS, MODELS, OPTIONS, ConfigError, build_config
from .exitcodes import EXIT_CONFIG

# The module that serves each name: the master models are all the prefork master over some engine.
SERVER_MODULES = {"threadpool": "threadpool", "eventloop": "eventloop", "greenthreads": "greenthreads",
                  **{m: "prefork" for m in MASTER_MODELS}}


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one server model",
                       description="Run one server model. Every flag can also be set with WEBMODELS_<FLAG>.")
    p.add_argument("model", nargs="?", choices=MODELS, help=f"{' | '.join(MODELS)} (or WEBMODELS_MODEL)")
    for opt in OPTIONS:
        if opt.hidden:
            continue
        models = "" if len(opt.models) == len(MODELS) else f" [{opt.where()}]"
        help_text = f"{opt.help}{models} (env {opt.env})"
        if opt.kind is bool:
            p.add_argument(opt.flag, dest=opt.name, action="store_const", const=True, default=None,
                           help=help_text)
        else:
            p.add_argument(opt.flag, dest=opt.name, default=None, metavar=opt.name.split("_")[-1].upper(),
                           choices=opt.choices or None, help=help_text)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .log import log, setup

    model = args.model or os.environ.get("WEBMODELS_MODEL")
    try:
        if not model:
            raise ConfigError(f"no model given: webmodels serve {'|'.join(MODELS)}")
        config = build_config(model, {o.name: getattr(args, o.name, None) for o in OPTIONS})
    except ConfigError as exc:
        print(f"webmodels serve: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup(access_log=config.access_log)
    server = importlib.import_module(f"webmodels.servers.{SERVER_MODULES[config.model]}")
    try:
        return server.serve(config)
    except OSError as exc:
        from .listen import PortInUse
        if isinstance(exc, PortInUse):
            log.error("cannot start: %s", exc.strerror)
            return EXIT_CONFIG
        raise


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range 0-3600")
    return value


def _add_up(sub: argparse._SubParsersAction) -> None:
    from .lab import LOCUST_PORT, SERVERS
    ports = [s.port for s in SERVERS.values()]
    p = sub.add_parser("up", help=f"run the whole lab natively: {len(SERVERS)} servers + Locust UI, with restarts",
                       description=f"Start the lab's {len(SERVERS)} servers on 127.0.0.1:{min(ports)}-{max(ports)} "
                       f"with the settings in lab/*.env and the Locust web UI on 127.0.0.1:{LOCUST_PORT}; restart a "
                       "crashed server as Docker's restart "
                       "policy would (100 ms, doubling up to 1 min, reset after 10 s up). Ctrl-C stops everything.",
                       epilog="The supervisor's state (restarts, back-off) is kept in a JSON file that `webmodels "
                       "status` and Locust's Servers tab read. For short experiments WEBMODELS_BACKOFF_FIRST and "
                       "WEBMODELS_BACKOFF_RESET_AFTER (seconds) change the back-off's first wait and reset period.")
    p.add_argument("--no-locust", dest="locust", action="store_false", help="servers only")
    p.add_argument("--locust-processes", type=int, default=0, metavar="N",
                   help="run Locust with --processes N (more load than one core can generate)")
    p.add_argument("--metrics", action="store_true",
                   help="also run Prometheus on 127.0.0.1:9090 scraping every server's /metrics (needs a "
                   "`prometheus` binary: apt-get install prometheus)")
    p.add_argument("--port-offset", type=int, default=int(os.environ.get("WEBMODELS_PORT_OFFSET", "0")),
                   metavar="N", help=f"shift every lab port by N (e.g. 10000 → {min(ports) + 10000}-"
                   f"{max(ports) + 10000}, {LOCUST_PORT + 10000}; also WEBMODELS_PORT_OFFSET, read by status, kill "
                   "and scale too)")
    p.add_argument("--restart-delay", type=_seconds, default=None, metavar="S",
                   help="restart a crashed server after a fixed S seconds instead of Docker's growing back-off "
                   "(0 = at once), so repeated crashes measure the model, not the restart policy")
    p.set_defaults(func=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    from .log import log, setup
    from .supervisor import PortBusy, RestartPolicy, up

    setup()
    extra = ["--processes", str(args.locust_processes)] if args.locust_processes else []
    if args.metrics:
        from .promlab import MISSING, find_binary
        if find_binary() is None:
            print(MISSING, file=sys.stderr)
            return EXIT_CONFIG
    try:
        policy = RestartPolicy.from_env(fixed=args.restart_delay)  # WEBMODELS_BACKOFF_* may be malformed
        return up(locust=args.locust, locust_args=extra, offset=args.port_offset, policy=policy,
                  metrics=args.metrics)
    except (PortBusy, ValueError) as exc:
        log.error("cannot start the lab: %s", exc)
        return EXIT_CONFIG


def _add_offset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port-offset", type=int, default=int(os.environ.get("WEBMODELS_PORT_OFFSET", "0")),
                   metavar="N", help="the lab started with `webmodels up --port-offset N`")


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="table of the lab's servers (native or compose): up, hung or down")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_offset(p)
    p.set_defaults(func=lambda a: __import__("webmodels.labctl", fromlist=["x"]).print_status(a.json, a.port_offset))


def _add_kill(sub: argparse._SubParsersAction) -> None:
    from .lab import SERVERS
    masters = ", ".join(m for m, s in SERVERS.items() if s.master)
    p = sub.add_parser("kill", help="SIGKILL one worker of a master model or a whole lab server, and confirm it",
                       description="SIGKILL a lab server (--process) or one of its workers (--worker; default for "
                       f"the master models: {masters}) and confirm the process is gone. Natively (`webmodels up`) by "
                       "pid, from the supervisor's state file; with `docker compose up` through the Docker engine "
                       "(docker exec … kill, confirmed by docker inspect); otherwise through the server's own "
                       "POST /_lab/kill route (faults on, as in the lab). Works on a hung server natively and in "
                       "Docker. Exit status 0 only when the process is confirmed gone.")
    p.add_argument("model", choices=tuple(SERVERS))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--worker", dest="target", action="store_const", const="worker",
                   help=f"one worker ({masters})")
    g.add_argument("--process", dest="target", action="store_const", const="process",
                   help="the whole server (for a master model: the master, and its workers with it)")
    p.add_argument("--pid", type=_worker_pid, metavar="PID|busiest",
                   help="with --worker: this worker; busiest: the one with the most requests in flight now")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON (ok, message, facts)")
    _add_offset(p)
    p.set_defaults(func=cmd_kill)


def _worker_pid(text: str) -> int | str:
    if text == "busiest":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pid or 'busiest': {text!r}") from None


def cmd_kill(args: argparse.Namespace) -> int:
    from .actions import default_target
    from .lab import SERVERS
    from .labctl import kill

    target = args.target or default_target(args.model)
    if target == "worker" and not SERVERS[args.model].master:
        print(f"webmodels kill: error: the {args.model} model has no worker processes; use --process",
              file=sys.stderr)
        return EXIT_CONFIG
    return kill(args.model, target, args.pid, args.port_offset, args.json)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from .bench.kit import MODELS as BENCH_MODELS  # the lab's servers: the models Locust can load
    from .bench.scenarios import DEFAULT, SCENARIOS
    p = sub.add_parser("bench", help="measure the processes-vs-threads table; write results.json + a report",
                       description="Start the servers (pinned with taskset), load them with Locust as a subprocess, "
                       "sample /_lab/stats, and write DIR/results.json, report.md, report.html and PNG charts. "
                       "With CI=true a scenario that errored or was skipped fails the run.")
    p.add_argument("--models", default=",".join(BENCH_MODELS),
                   help=f"comma-separated (default: the lab's servers: {', '.join(BENCH_MODELS)})")
    p.add_argument("--scenarios", default=",".join(DEFAULT),
                   help=f"comma-separated from: {', '.join(SCENARIOS)} (default: all but "
                   f"{', '.join(n for n in SCENARIOS if n not in DEFAULT) or 'none'})")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="seconds per load step (default 6; 2 with --quick); for the soak, its whole length")
    p.add_argument("--quick", action="store_true", help="the whole matrix in a few minutes (CI)")
    p.add_argument("--connections", type=int, default=None, metavar="N",
                   help="many idle clients: keep-alive connections to hold (default 10000; 200 with --quick)")
    p.add_argument("--seed", type=int, default=None, help="soak: chaos schedule seed (default: random, printed)")
    p.add_argument("--out", default="bench-report", metavar="DIR", help="output directory (default bench-report)")
    p.add_argument("--targets", choices=("native", "compose"), default="native",
                   help="native: start the servers here; compose: load the running lab on its ports")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench.main import run_bench
    return run_bench(models=[m for m in args.models.split(",") if m], duration=args.duration, quick=args.quick,
                     scenarios=[s for s in args.scenarios.split(",") if s], out=Path(args.out), targets=args.targets,
                     connections=args.connections, seed=args.seed)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.md/.html and the charts from DIR/results.json")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=lambda a: __import__("webmodels.bench.main", fromlist=["x"]).run_report(
        __import__("pathlib").Path(a.dir)))


def _add_scale(sub: argparse._SubParsersAction) -> None:
    from .lab import SERVERS
    p = sub.add_parser("scale", help="add or remove workers of a master model (SIGTTIN/SIGTTOU to the master)",
                       description="Works natively and in Docker alike (docker-init does not forward SIGTTIN): the "
                       "server's POST /_lab/scale route signals its own master. Exit status 0 once the live worker "
                       "count has reached the new target.")
    p.add_argument("model", choices=tuple(m for m, s in SERVERS.items() if s.master))
    p.add_argument("delta", type=int, help="workers to add (+N) or remove (-N), at most 16 at a time")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON (ok, message, facts)")
    _add_offset(p)
    p.set_defaults(func=lambda a: __import__("webmodels.labctl", fromlist=["x"]).scale(a.model, a.delta,
                                                                                         a.port_offset, a.json))


COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "serve": _add_serve, "up": _add_up, "status": _add_status, "kill": _add_kill, "scale": _add_scale,
    "bench": _add_bench, "report": _add_report}


def _patch_first(argv: list[str]) -> None:
    """`serve greenthreads`: gevent must patch the standard library before anything imports socket or threading.

    (Its module patches as its first line; a prefork worker of engine gevent patches after its fork instead.)
    """
    model = next((a for a in argv[1:] if not a.startswith("-")), None) or os.environ.get("WEBMODELS_MODEL")
    if argv[:1] == ["serve"] and model == "greenthreads":
        importlib.import_module("webmodels.servers.greenthreads")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _patch_first(argv)
    parser = argparse.ArgumentParser(prog="webmodels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # Build only the parser of the command named, when one is: `serve` starts hundreds of times (tests, the
    # lab, the bench), and the bench's parser imports every scenario to list their names (~180 ms, two
    # thirds of a server's start). Anything else (`--help`, a typo) gets every command, as argparse shows.
    named = COMMANDS.get(argv[0]) if argv else None
    for add in [named] if named else COMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
