"""``tuneforge estimate --config X [--gpu-memory 80GiB] [--nproc N]``: peak memory per rank, before anything loads.

The breakdown (weights, gradients, optimizer state, activations; offload to CPU) goes to stderr
as a table, one JSON object to stdout. The formulas are in :mod:`tuneforge.estimate`.
"""

from __future__ import annotations

import argparse
import json
import sys

from tuneforge.commands.train import add_config_arguments
from tuneforge.config import load_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="expected peak memory per rank of a config, from the model's config alone")
    add_config_arguments(p)
    p.add_argument("--gpu-memory", metavar="SIZE", help="device memory to check against, e.g. 80GiB or 24GB")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="world size to estimate for (default: the launcher's, else 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneforge.errors import ConfigError
    from tuneforge.estimate import estimate, parse_memory

    device = parse_memory(args.gpu_memory) if args.gpu_memory is not None else None
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    config = load_config(args.config, args.overrides)
    result = estimate(config, world_size=args.nproc)
    print(result.table(device), file=sys.stderr)
    print(json.dumps(result.to_json(device)))
    return 0
