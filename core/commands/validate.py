"""``tuneforge validate --config X``: check a config and its plugins without training."""

from __future__ import annotations

import argparse

from tuneforge.commands.train import add_config_arguments
from tuneforge.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a config (keys, types, plugins, files) without training")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneforge.preflight import preflight

    config = load_config(args.config, args.overrides)
    plan = preflight(config, check_output=False)
    adapter = f", adapter '{config.adapter.type}'" if config.adapter else ""
    print(f"{args.config}: OK (task '{config.task.name}' from plugin "
          f"'{plan.plugins.tasks.entry(config.task.name).plugin}'{adapter}, trackers {config.trackers})")
    return 0
