"""``tuneforge export --run DIR [--merge] [--output DIR]``: a Hugging Face model directory from a run.

Without ``--merge`` the run's exported model (``DIR/model``: full weights, or only the
adapter plus task head for adapter runs) is copied to ``--output``. With ``--merge`` an
adapter run's adapter is merged into its base model and the full model is saved, so
plain ``transformers`` (``AutoModelFor...from_pretrained``) loads it without PEFT.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from tuneforge.commands import stdout_kept_for_results
from tuneforge.config import load_config
from tuneforge.errors import ConfigError

log = logging.getLogger("tuneforge")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's model as a Hugging Face model directory")
    p.add_argument("--run", required=True, type=Path, help="run directory (holds config.yaml and model/)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base model (full weights)")
    p.add_argument("--output", "-o", type=Path, help="output directory; default: RUN/merged or RUN/export")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=run)


def export(run_dir: Path, output: Path | None = None, *, merge: bool = False, overwrite: bool = False) -> Path:
    """Write the model of ``run_dir`` to ``output``; returns the output directory."""
    config_path, model_dir = run_dir / "config.yaml", run_dir / "model"
    if not config_path.is_file():
        raise ConfigError(f"'{run_dir}' is not a run directory: {config_path.name} is missing")
    if not model_dir.is_dir():
        raise ConfigError(
            f"run '{run_dir}' has no exported model ({model_dir} is missing); it was trained with "
            "output.export=false or did not finish"
        )
    output = output or run_dir / ("merged" if merge else "export")
    if output.resolve() == model_dir.resolve():
        raise ConfigError(f"--output '{output}' is the run's own model directory; choose another")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ConfigError(f"output directory '{output}' is not empty; pass --overwrite or choose another --output")
        shutil.rmtree(output)
    has_adapter = (model_dir / "adapter_config.json").is_file()
    if not merge or not has_adapter:
        if merge:
            log.info("run '%s' trained the full model (no adapter): exporting it as is", run_dir)
        shutil.copytree(model_dir, output, dirs_exist_ok=True)
        return output

    from tuneforge.adapters import describe_parameters
    from tuneforge.builders import load_trained_model

    config = load_config(config_path)
    task, tokenizer, model = load_trained_model(config, model_dir)
    merged = model.merge_and_unload()  # type: ignore[operator]
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(output), safe_serialization=True)
    tokenizer.save_pretrained(str(output))
    task.save_state(output)
    log.info("merged %s into %s: %s", model_dir, output, describe_parameters(merged))
    return output


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with stdout_kept_for_results():
        output = export(args.run, args.output, merge=args.merge, overwrite=args.overwrite)
    files = sorted(p.name for p in output.iterdir())
    print(json.dumps({"output": str(output), "merged": args.merge, "files": files}))
    return 0
