"""``tuneforge train --config X [section.key=value ...]``: one training run.

``accelerate launch launch/run.py ...`` and ``torchrun launch/run.py ...`` call
this same function on every rank; ``--nproc N`` re-launches this command with
``torch.distributed.run`` (torchrun) as N processes on this machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tuneforge import jsonio
from tuneforge.commands import stdout_kept_for_results
from tuneforge.config import load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="run config YAML")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. training.lr=3e-5")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one run from a config")
    add_config_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train with N processes on this machine (torchrun; gloo on CPU, nccl on GPUs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneforge.run import train

    overrides = list(args.overrides) + (["resume=auto"] if args.resume else [])
    config = load_config(args.config, overrides)
    if args.nproc is not None and args.nproc != 1:
        return relaunch(args.nproc, ["train", "--config", args.config, *overrides])
    with stdout_kept_for_results():
        results = train(config)
    if results.get("world_size", 1) == 1 or _is_main():
        with stdout_kept_for_results():
            record_run(config, results)
        print(jsonio.dumps({k: results[k] for k in ("status", "steps", "best_metric", "test") if k in results}))
    return 0


def record_run(config: Any, results: dict[str, Any]) -> None:
    """Add the finished run to the study library when asked to (docs/library.md)."""
    from tuneforge.search.library import entry_from_run, library_location, open_library, records_train_runs

    search = config.search
    location = library_location(search.library if search else None)
    if not location or not records_train_runs(bool(search and search.record_train_runs)):
        return
    entry = entry_from_run(config, Path(config.output.dir), results)
    print(f"library: recorded '{open_library(location).add(entry)}' in {location}")


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run ``tuneforge <argv>`` as ``nproc`` processes under torchrun; returns its exit code."""
    from tuneforge.errors import ConfigError, DistributedError

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if "WORLD_SIZE" in os.environ:
        raise DistributedError(
            f"--nproc {nproc} inside a launcher (WORLD_SIZE={os.environ['WORLD_SIZE']}): drop --nproc and let "
            "torchrun/accelerate launch start the processes"
        )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "tuneforge.cli", *argv]
    return subprocess.call(cmd)


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
