"""``tuneforge predict --run DIR | --model PATH --task NAME --data FILE --output preds.jsonl``.

Labels in ``--data`` are not needed (and are ignored). Each output line is
``{"index": i, <the task's prediction fields>, "input": <the input record>}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from tuneforge.commands import stdout_kept_for_results
from tuneforge.commands.evaluate import add_model_arguments
from tuneforge.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="write a trained model's predictions for a data file as JSON lines")
    add_model_arguments(p)
    p.add_argument("--data", type=Path, required=True, help="input file in the task's format (labels optional)")
    p.add_argument("--output", "-o", type=Path, required=True, help="predictions file to write (.jsonl)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with stdout_kept_for_results():
        count, seconds = _predict(args)
    print(json.dumps({"predictions": count, "output": str(args.output), "seconds": seconds}))
    return 0


def _predict(args: argparse.Namespace) -> tuple[int, float]:
    from tuneforge import inference

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    inference.quiet_transformers()
    if args.config is not None:
        trained = inference.load_base(args.config, list(args.overrides))
    else:
        trained = inference.load(args.run, args.model, args.task, list(args.overrides))
    started = time.perf_counter()
    records = trained.task.read(str(args.data), "predict")
    features, outputs = inference.infer(trained, records, "predict", args.batch_size)
    preds = inference.predictions(trained, outputs, features, records)
    if preds is None:
        raise ConfigError(f"task '{trained.config.task.name}' does not implement predictions(); "
                          "use `tuneforge evaluate` for its metrics")
    inference.write_predictions(args.output, records, preds)
    return len(preds), round(time.perf_counter() - started, 2)
