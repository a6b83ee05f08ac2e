"""``tuneforge evaluate --run DIR | --model PATH --task NAME [--data FILE]``: metrics of a trained model.

Without ``--data`` it scores the config's test split as a run is tested: ``data.test`` (else
``data.validation``) capped at ``data.max_test_samples``. Writes ``metrics.json``, ``predictions.jsonl`` (when the task makes predictions) and the
task's reports (``reports/``) to ``--output`` (default ``RUN/eval/<data file stem>``).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tuneforge import jsonio
from tuneforge.commands import stdout_kept_for_results
from tuneforge.errors import ConfigError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--run``/``--model``/``--task``/``--batch-size`` and KEY=VALUE overrides (shared with predict)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="run directory written by `tuneforge train` (config.yaml + model/)")
    source.add_argument("--model", type=Path, help="a Hugging Face model directory (e.g. a run's model/ or an export)")
    source.add_argument("--config", type=Path, help="a run config: its untrained base model (zero-shot), as "
                        "`train` would build it")
    parser.add_argument("--task", help="task plugin name; needed with --model outside a run directory")
    parser.add_argument("--batch-size", type=int, help="examples per batch (default: the run's eval batch size)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. task.text_field=sentence data.max_length=256")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compute a trained model's metrics on a labelled data file")
    add_model_arguments(p)
    p.add_argument("--data", type=Path, help="labelled data file (default: the run's data.test, else data.validation)")
    p.add_argument("--output", "-o", type=Path, help="output directory (default: RUN/eval/<data file stem>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with stdout_kept_for_results():
        metrics, examples, out = _evaluate(args)
    print(jsonio.dumps({"metrics": {k: round(v, 6) for k, v in sorted(metrics.items())},
                      "examples": examples, "output": str(out)}))
    return 0


def _evaluate(args: argparse.Namespace) -> tuple[dict[str, float], int, Path]:
    from tuneforge import inference

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    inference.quiet_transformers()
    overrides = list(args.overrides) + ([f"data.test={args.data}"] if args.data else [])
    if args.config is not None:
        trained = inference.load_base(args.config, overrides)
    else:
        trained = inference.load(args.run, args.model, args.task, overrides)
    data = trained.config.data.test or trained.config.data.validation
    if args.data is None and (data is None or (trained.run_dir is None and args.config is None)):
        raise ConfigError("no data to evaluate on: pass --data FILE (a labelled file in the task's format)")
    assert data is not None
    started = time.perf_counter()
    records = trained.task.read(data, "test")
    cap = trained.config.data.max_test_samples
    if args.data is None and cap is not None and len(records) > cap:
        # the config's own test split: the very records its run is (or was) tested on
        logging.getLogger("tuneforge").warning("data.max_test_samples=%d: evaluating the first %d of %d test "
                                               "records of %s", cap, cap, len(records), data)
        records = records[:cap]
    features, outputs = inference.infer(trained, records, "test", args.batch_size)
    if not features:
        raise ConfigError(f"'{data}' holds no examples to evaluate")
    metrics = inference.compute_metrics(trained, outputs, "test", features)
    seconds = time.perf_counter() - started

    if trained.run_dir is not None:
        base = trained.run_dir / "eval"
    else:  # a base model: beside the run its config would write
        base = Path(trained.config.output.dir) / "zero-shot" if args.config is not None else Path("eval")
    out = args.output or base / Path(data).stem
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "metrics": metrics,
        "data": str(data),
        "model": str(trained.model_dir),
        "task": trained.config.task.name,
        "examples": len(records),
        "seconds": round(seconds, 2),
    }
    (out / "metrics.json").write_text(jsonio.dumps(summary, indent=2), encoding="utf-8")
    preds = inference.predictions(trained, outputs, features, records)
    if preds is not None:
        inference.write_predictions(out / "predictions.jsonl", records, preds)
    trained.task.write_reports(outputs, "test", features, out)
    return metrics, len(records), out
