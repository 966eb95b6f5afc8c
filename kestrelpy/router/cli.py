"""``kestrelpy router run``: one processing run of an interface, by hand, from cron, or as
the detached child a router starts at exit (``send.on_exit``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kestrelpy.router import exit_runs
from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.router import Router


def run_command(args: argparse.Namespace) -> int:
    quiet = args.config_json is not None  # an exit child writes to its parent's log
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="kestrelpy router: %(message)s")
    if args.config_json is not None:
        sources = exit_runs.load_sources(Path(args.config_json), delete=args.delete_config)
        router = Router(sources)
    elif args.config is not None:
        router = Router.from_toml(args.config)
    else:
        raise RouterConfigError("router run: --config FILE (a [router] table) is required")
    with router:
        interface = router.interface_named(args.interface)
        queues = args.queue or sorted(interface.queues.names)
        if not queues:
            raise RouterConfigError(
                f"router run: interface {args.interface!r} matches queues by pattern: "
                "name them with --queue"
            )
        mode = args.mode or interface.send.on_exit
        if mode == "none":  # run by hand, no at-exit work configured: what the config implies
            mode = "flush" if interface.send.buffer else "consume"
        handled, cut_short = exit_runs.run(router, args.interface, queues, mode)
        logging.info("interface %s: %d message(s) handled", args.interface, handled)
        if cut_short and interface.send.retrigger and args.config_json is None:
            exit_runs.start_run_from_file(args.config, args.interface, queues)
        elif cut_short and interface.send.retrigger:
            exit_runs.start_run(router.sources(), args.interface, queues)
    return 0
