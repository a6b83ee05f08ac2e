"""``tuneforge meta --config X [section.key=value ...]``: meta-train a start on a
collection of tasks and compare few-shot adaptation from it with two baselines."""

from __future__ import annotations

import argparse

from tuneforge import jsonio
from tuneforge.commands import stdout_kept_for_results
from tuneforge.commands.train import add_config_arguments
from tuneforge.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("meta", help="meta-learn a few-shot start (Reptile/FOMAML) and evaluate it")
    add_config_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.add_argument("--json", action="store_true", help="print results.json instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from tuneforge.meta.run import format_table, run_meta

    config = load_config(args.config, list(args.overrides) + (["resume=auto"] if args.resume else []))
    with stdout_kept_for_results():
        results = run_meta(config)
    if os.environ.get("RANK", "0") == "0":
        print(jsonio.dumps(results) if args.json else format_table(results))
        if not args.json:
            print(f"meta-learned start: {results['meta_start']}")
    return 0
