"""Subprocess bodies of the GPU checks (each run in its own process by ``gpu_checks.py``, so a
crash or an out-of-memory error stays inside one check):

    python workers.py NAME ARGS_JSON OUT_JSON

* ``env``         versions, the device, and a measured bf16 matmul rate
* ``smollm2``     SmolLM2-135M-Instruct as a local model directory: de-quantised from its GGUF
                  (transformers' ``gguf_file`` loading), or random weights of its config when no
                  GGUF is at hand; in the dry run a tiny random Llama
* ``llama_dir``   a random-init Llama of given sizes saved as a model directory (check 4 loads it
                  through ``from_pretrained``, the only way bitsandbytes quantises)
* ``throughput``  the 1B Llama's training steps through tuneforge's Runtime (Accelerate bf16
                  autocast), AdamW and LoRA plugin: full / LoRA, with and without checkpointing
* ``plain``       check 1's job as a plain PyTorch + PEFT loop (no Accelerate, no tuneforge loop)
"""

from __future__ import annotations

import gc
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def measured_matmul_flops(device: Any) -> float:
    """bf16 matmul rate on random data (8192^3 on a GPU, 512^3 on a CPU): median of 10 after 3 warm-ups."""
    import statistics

    import torch

    n = 8192 if device.type == "cuda" else 512
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(13):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times)


def env(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "device_count": torch.cuda.device_count(), "hostname": platform.node(),
        "packages": {n: _version(n) for n in ("tuneforge", "transformers", "accelerate", "peft", "deepspeed",
                                              "bitsandbytes", "gguf", "pydantic", "triton")},
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count)
    info["measured_bf16_matmul_tflops"] = round(measured_matmul_flops(device) / 1e12, 3)
    return info


# -- models --------------------------------------------------------------------------------


def smollm2(args: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dest = Path(args["dest"])
    if args.get("dry_run"):
        from tuneforge.testing.pytest_plugin import make_tiny_causal_lm

        make_tiny_causal_lm(dest, arch="llama")
        return {"source": "tiny random Llama (dry run)"}
    gguf = args.get("gguf")
    if gguf:
        where, name = str(Path(gguf).parent), Path(gguf).name
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
        # a GGUF-loaded model counts as quantised and refuses save_pretrained: copy its (de-quantised)
        # weights into a plain model of the same config
        config = loaded.config
        for attr in ("quantization_config", "gguf_file"):
            if hasattr(config, attr):
                delattr(config, attr)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        source = f"SmolLM2-135M-Instruct GGUF Q4_1 ({gguf}), de-quantised to fp32"
    else:
        assets = args["assets"]
        tokenizer = AutoTokenizer.from_pretrained(assets)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(assets))
        source = f"random weights of the SmolLM2-135M-Instruct config ({assets}): no GGUF on this machine"
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return {"source": source, "params": sum(p.numel() for p in model.parameters())}


def llama_config(dims: dict[str, int], vocab_size: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=dims["hidden"], intermediate_size=dims["intermediate"], num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"], num_key_value_heads=dims["kv_heads"], vocab_size=vocab_size,
        max_position_embeddings=max(dims["seq"], 2048), tie_word_embeddings=False, rope_theta=500000.0,
        attn_implementation="sdpa", use_cache=False,
    )


def llama_dir(args: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(args["tokenizer"])
    config = llama_config(args["dims"], len(tokenizer))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, key, getattr(tokenizer, key))
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args["dest"])
    tokenizer.save_pretrained(args["dest"])
    return {"params": sum(p.numel() for p in model.parameters())}


# -- check 2: throughput of the 1B Llama -----------------------------------------------------


def throughput(args: dict[str, Any]) -> dict[str, Any]:
    """Every variant in this one process, one after the other, memory released between them."""
    import torch

    from tuneforge.config import validate
    from tuneforge.distributed import create_runtime

    base = {"model": {"name_or_path": "llama-1b-random"}, "task": {"name": "causal_lm"},
            "data": {"train": "unused.jsonl"},
            "training": {"batch_size": args["batch"], "lr": 1e-5, "mixed_precision": "bf16", "seed": 0}}
    runtime = create_runtime(validate(base))
    results: dict[str, Any] = {"runtime": runtime.strategy.describe(), "mixed_precision": "bf16"}
    for variant in args["variants"]:
        try:
            results[variant] = _throughput_variant(runtime, base, variant, args)
        except torch.OutOfMemoryError as exc:
            results[variant] = {"error": f"OutOfMemoryError: {str(exc).splitlines()[0]}"}
        runtime.accelerator.free_memory()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


def _throughput_variant(runtime: Any, base: dict[str, Any], variant: str, args: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import LlamaForCausalLM

    from tuneforge.builders import build_optimizer
    from tuneforge.config import validate
    from tuneforge.plugin_manager import PluginManager

    lora, checkpointing = variant.startswith("lora"), variant.endswith("_gc")
    raw = {**base, "distributed": {"gradient_checkpointing": checkpointing}}
    if lora:
        raw["adapter"] = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": LORA_TARGETS}
    config = validate(raw)
    dims, device = args["dims"], runtime.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(llama_config(dims, args["vocab"]))
    n_params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    if lora:  # frozen base in bf16 (what `model.dtype: bfloat16` loads); adapters stay fp32 (PEFT)
        model.to(torch.bfloat16)
    if checkpointing:  # as tuneforge.run does, before the adapter
        model.gradient_checkpointing_enable()
    if lora:
        cls = PluginManager.default().build_registries().adapters.get("lora")
        model = cls(cls.parse_options(config.adapter.options()), config).apply(model, None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = build_optimizer(model, config)
    model, optimizer = runtime.prepare(model, optimizer)
    model.train()
    g = torch.Generator(device=device).manual_seed(0)
    stamps, losses = [], []
    for step in range(args["warmup"] + args["steps"]):
        ids = torch.randint(0, args["vocab"], (args["batch"], args["seq"]), device=device, generator=g)
        if step == 0:
            stamps.append(time.perf_counter())
        with runtime.accumulate(model):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            runtime.backward(loss)
        runtime.optimizer_step(model, optimizer, 1.0)
        losses.append(loss.item())  # synchronises: the stamp follows the step's GPU work
        stamps.append(time.perf_counter())
    out = {"stamps": stamps, "losses": losses, "params": n_params, "embedding_params": embedding,
           "trainable": trainable, "attn_implementation": runtime.unwrap(model).config._attn_implementation,
           "weights_dtype": "bfloat16 (frozen), adapters float32" if lora else "float32 (bf16 autocast)"}
    if cuda:
        out["peak_bytes"] = int(torch.cuda.max_memory_allocated())
    else:
        import resource

        out["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del model, optimizer
    return out


# -- check 5: the plain loop ----------------------------------------------------------------


def plain(args: dict[str, Any]) -> dict[str, Any]:
    """Check 1's job (same model, features, batches, LoRA, AdamW, schedule, clipping, bf16
    autocast) in a hand-written loop: PyTorch + transformers + PEFT only. The features come
    from tuneforge's causal_lm encoder so the batches are identical; encoding is not timed."""
    import torch
    from bench_overhead import SeededSampler
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler
    from transformers import set_seed as hf_set_seed

    from tuneforge.config import load_config
    from tuneforge.data import read_records
    from tuneforge.plugin_manager import PluginManager

    config = load_config(args["config"])
    t, a = config.training, config.adapter
    assert a is not None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hf_set_seed(t.seed)
    task_cls = PluginManager.default().build_registries().tasks.get("causal_lm")
    task = task_cls(task_cls.parse_options(config.task.options()), config)
    tokenizer = AutoTokenizer.from_pretrained(config.model.name_or_path)
    features = task.encode(read_records(config.data.train)[: config.data.max_train_samples], tokenizer, "train")
    model = AutoModelForCausalLM.from_pretrained(config.model.name_or_path, dtype=getattr(torch, config.model.dtype))
    opts = a.options()
    model = get_peft_model(model, LoraConfig(r=opts["r"], lora_alpha=opts["alpha"], lora_dropout=opts["dropout"],
                                             target_modules=opts["target_modules"]))
    model.to(device)

    def collate(feats: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {k: torch.tensor([f[k] for f in feats]) for k in ("input_ids", "labels", "position_ids")}

    sampler = SeededSampler(len(features), t.seed)
    loader = DataLoader(features, batch_size=t.batch_size, sampler=sampler, collate_fn=collate,
                        generator=torch.Generator().manual_seed(t.seed))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr, betas=t.betas, eps=t.eps)
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=args["steps"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.mixed_precision == "bf16")
    model.train()
    stamps, losses, epoch = [time.perf_counter()], [], 0
    while len(losses) < args["steps"]:
        sampler.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss = model(**batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            stamps.append(time.perf_counter())
            if len(losses) == args["steps"]:
                break
        epoch += 1
    return {"stamps": stamps, "losses": losses}


WORKERS = {"env": env, "smollm2": smollm2, "llama_dir": llama_dir, "throughput": throughput, "plain": plain}


def main() -> None:
    name, args_json, out = sys.argv[1:4]
    import logging

    logging.disable(logging.WARNING)
    result = WORKERS[name](json.loads(args_json))
    Path(out).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
