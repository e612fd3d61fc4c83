"""`webmodels` — the composition root: the only module that knows every model and every tool."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

from .config import MODELS, OPTIONS, ConfigError, build_config
from .faults import EXIT_CONFIG


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one server model",
                       description="Run one server model. Every flag can also be set with WEBMODELS_<FLAG>.")
    p.add_argument("model", nargs="?", choices=MODELS, help="threadpool | prefork | eventloop "
                   "(or WEBMODELS_MODEL)")
    for opt in OPTIONS:
        models = "" if len(opt.models) == len(MODELS) else f" [{', '.join(opt.models)}]"
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
            raise ConfigError("no model given: webmodels serve threadpool|prefork|eventloop")
        config = build_config(model, {o.name: getattr(args, o.name) for o in OPTIONS})
    except ConfigError as exc:
        print(f"webmodels serve: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup(access_log=config.access_log)
    server = importlib.import_module(f"servers.{config.model}")
    try:
        return server.serve(config)
    except OSError as exc:
        from .listen import PortInUse
        if isinstance(exc, PortInUse):
            log.error("cannot start: %s", exc.strerror)
            return EXIT_CONFIG
        raise


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_serve]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webmodels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
