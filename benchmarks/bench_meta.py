"""Meta-learning benchmark: BANKING77 with MiniLM-L6, 5-way and 10-way, K = 1/5/10.

Runs `tuneforge meta` with configs/meta-banking77-minilm.yaml (overrides may follow
on the command line) and prints ONE JSON line: for every setting the mean query
accuracy with its 95% confidence interval from the meta-learned start and from the
two baselines (plain pre-trained start, multi-task training on the same source
labels), all measured on the same held-out episodes in this run, plus the paired
difference meta - pretrained. Goal: >= +5 accuracy points over pre-trained at K=5;
``pretrained_room_at_k5_points`` says how many points the pre-trained start leaves
below 100% (no start can gain more; bench_meta_headroom.py measures it without training).

    python benchmarks/bench_meta.py [--threads 2] [--quick] [--resume] [meta.meta_steps=200 ...]

--quick runs a few episodes only (a smoke test of the pipeline, not a measurement).
On a CPU shared with other jobs, --threads 1 avoids OpenMP spinning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "meta-banking77-minilm.yaml"
DATA = ROOT.parent / "shared" / "data" / "intents" / "banking77" / "train.csv"
QUICK = ["meta.meta_steps=2", "meta.multitask_steps=2", "meta.eval.episodes=3", "meta.eval.shots=[1,5]",
         "meta.max_examples_per_label=16"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke test: a few episodes")
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench-meta"), help="run directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --output (default: start over there)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. meta.algorithm=fomaml")
    args = parser.parse_args()
    if not DATA.is_file():
        print(json.dumps({"benchmark": "meta", "skipped": f"BANKING77 not found at {DATA}"}))
        return 0
    import torch

    from tuneforge.config import load_config
    from tuneforge.meta.run import run_meta

    torch.set_num_threads(args.threads)
    restart = ["resume=auto"] if args.resume else ["output.overwrite=true"]
    overrides = (QUICK if args.quick else []) + [f"output.dir={args.output}", *restart] + list(args.overrides)
    config = load_config(CONFIG, overrides)
    started = time.perf_counter()
    results = run_meta(config)
    table = {}
    for setting, row in results["meta_test"].items():
        table[setting] = {
            name: {"accuracy": round(100 * cell["accuracy"], 2), "ci95": round(100 * cell["ci95"], 2)}
            for name, cell in row.items() if name in ("meta", "pretrained", "multitask")
        }
        for key in ("meta_minus_pretrained", "meta_minus_multitask"):
            if key in row:
                table[setting][key] = {"points": round(100 * row[key]["accuracy"], 2),
                                       "ci95": round(100 * row[key]["ci95"], 2)}
    k5 = [cells["meta_minus_pretrained"]["points"] for s, cells in table.items()
          if s.endswith(" 5-shot") and "meta_minus_pretrained" in cells]
    # no start can gain more over the pre-trained one than the points it leaves below 100%
    room = {s: round(100 - cells["pretrained"]["accuracy"], 2) for s, cells in table.items()
            if s.endswith(" 5-shot") and "pretrained" in cells}
    m = config.meta
    assert m is not None
    print(json.dumps({
        "benchmark": "meta",
        "model": config.model.name_or_path,
        "data": "banking77",
        "algorithm": m.algorithm,
        "learn": f"{m.learn}" + (f"({m.top_layers})" if m.learn == "top_layers" else ""),
        "meta_steps": m.meta_steps,
        "episodes": m.eval.episodes,
        "fine_tune_steps": results["fine_tune"]["steps"],
        "table_accuracy_percent": table,
        "gain_over_pretrained_at_k5_points": k5,
        "goal_plus5_at_k5_met": bool(k5) and all(d >= 5.0 for d in k5),
        "pretrained_room_at_k5_points": room,
        "meta_train_seconds": results["meta_train_seconds"],
        "multitask_train_seconds": results["multitask_train_seconds"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "threads": args.threads,
        "quick": args.quick,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
