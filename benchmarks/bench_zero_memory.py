"""Per-rank memory of parameters + gradients + optimizer state: DDP vs DeepSpeed ZeRO-1/2/3
at 2 ranks on a causal LM, against the ZeRO paper's formulas; and the step time of 2 ranks
vs 1 rank at equal global batch. Prints ONE JSON line.

    python benchmarks/bench_zero_memory.py [--layers 4 --hidden 256 --steps 6] [--precision-table bf16]

How memory is measured: on every rank, after the first backward pass of a step with 2
accumulation micro-batches (gradients accumulating: full-size under DDP and ZeRO-1, partitioned
under ZeRO-2/3; optimizer state of earlier steps alive; at the boundary DeepSpeed's stage 1
also frees its full gradients, which would hide them), all live
tensors are found through the garbage collector and their storages summed once each (views
into DeepSpeed's flat buffers count once); the input batch is excluded. That is what the rank
holds for parameters, gradients and optimizer state (plus small engine buffers). Gradients
have no Python object until ``p.grad`` is read, so the model's ``p.grad`` are added explicitly.

Formulas. The ZeRO paper (mixed-precision Adam, K = 12 bytes of fp32 master weights +
momentum + variance per parameter): DDP 16P, stage 1 4P + 12P/N, stage 2 2P + 14P/N,
stage 3 16P/N. With ``training.mixed_precision: bf16`` (the default table here, and what a GPU
run uses) DeepSpeed keeps bf16 parameters and gradients and an fp32 master/momentum/variance
partition, and DDP autocasts fp32 weights (4P + 4P + 8P = 16P): the paper's setting, compared
with the paper's formulas. In fp32 (``--precision-table no``) the analogue is: parameters 4P,
gradients 4P, and DeepSpeed still keeps an fp32 master partition, so its K is 12 (master +
momentum + variance) while DDP's torch AdamW has no master copy (K = 8):
DDP 16P, stage 1 8P + 12P/N, stage 2 4P + 16P/N, stage 3 20P/N. Ratios vs DDP are compared
with these fp32 formulas (and the paper's mixed-precision ones are reported alongside).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
ACCUMULATION = 2  # memory is measured between the two micro-batches of a step


def formulas(n: int) -> dict[str, dict[str, float]]:
    """Bytes per parameter per rank."""
    fp32 = {"ddp": 16.0, "zero1": 8 + 12 / n, "zero2": 4 + 16 / n, "zero3": 20 / n}
    paper = {"ddp": 16.0, "zero1": 4 + 12 / n, "zero2": 2 + 14 / n, "zero3": 16 / n}
    return {"fp32": fp32, "paper_mixed_precision": paper}


def live_tensor_bytes(exclude: list[Any], include: list[Any]) -> int:
    """Bytes of every distinct CPU storage reachable from Python objects, plus ``include``
    (gradients live in C++ autograd meta and have no Python object until accessed)."""
    import torch

    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    total = 0
    for obj in [*include, *gc.get_objects()]:
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
                continue
            tensors = [obj]
            if isinstance(obj, torch.nn.Parameter) and hasattr(obj, "ds_tensor"):
                tensors.append(obj.ds_tensor)  # ZeRO-3: the local partition of a parameter
            for t in tensors:
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr and ptr not in seen and ptr not in skip:
                    seen.add(ptr)
                    total += storage.nbytes()
        except Exception:  # a half-constructed or freed object
            continue
    return total


def worker(args: argparse.Namespace) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tuneforge.builders import build_optimizer
    from tuneforge.config import validate
    from tuneforge.distributed import create_runtime

    strategy = args.strategy
    distributed: dict[str, Any] = {"strategy": "ddp"}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy.startswith("zero"):
        ds_json = Path(args.out) / f"ds-{strategy}.json"
        # small buckets and no persistent (replicated) small parameters: the formula's assumptions
        ds_json.write_text(json.dumps({"zero_optimization": {
            "reduce_bucket_size": args.bucket, "allgather_bucket_size": args.bucket,
            "stage3_prefetch_bucket_size": args.bucket, "stage3_param_persistence_threshold": 0,
            "stage3_max_live_parameters": args.bucket, "stage3_max_reuse_distance": 0}}))
        distributed = {"strategy": "deepspeed", "zero_stage": int(strategy[-1]), "deepspeed_config": str(ds_json)}
    config = validate({
        "model": {"name_or_path": "gpt2-bench"}, "task": {"name": "causal-lm"}, "data": {"train": "unused"},
        "training": {"batch_size": args.batch // world // ACCUMULATION, "lr": 1e-3, "max_grad_norm": 1.0,
                     "seed": 0, "gradient_accumulation_steps": ACCUMULATION, "mixed_precision": args.precision},
        "distributed": distributed,
    })
    runtime = create_runtime(config)
    torch.manual_seed(0)
    model_config = GPT2Config(vocab_size=args.vocab, n_positions=args.seq, n_embd=args.hidden,
                              n_layer=args.layers, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                              tie_word_embeddings=True)
    model = GPT2LMHeadModel(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, config)
    model, optimizer = runtime.prepare(model, optimizer)
    g = torch.Generator().manual_seed(1000 + runtime.process_index)
    times, measured = [], 0
    for step in range(args.steps):
        start = time.perf_counter()
        for micro in range(ACCUMULATION):
            ids = torch.randint(0, args.vocab, (args.batch // world // ACCUMULATION, args.seq), generator=g)
            with runtime.accumulate(model):
                loss = model(input_ids=ids, labels=ids).loss
                runtime.backward(loss)
            if step == args.steps - 1 and micro == 0:  # mid-accumulation: the gradients the formula counts
                gc.collect()
                grads = [p.grad for p in runtime.unwrap(model).parameters() if p.grad is not None]
                measured = live_tensor_bytes([ids], grads)
        runtime.optimizer_step(model, optimizer, 1.0)
        if step >= 2:  # the first steps allocate optimizer state
            times.append(time.perf_counter() - start)
    result = {"rank": runtime.process_index, "world": world, "strategy": strategy, "params": n_params,
              "bytes": measured, "step_seconds": sum(times) / len(times), "kind": runtime.kind}
    (Path(args.out) / f"{strategy}-w{world}-rank{runtime.process_index}.json").write_text(json.dumps(result))
    runtime.end()


def launch(nproc: int, strategy: str, args: argparse.Namespace, out: str) -> list[dict[str, Any]]:
    from tuneforge.distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), __file__, "--worker", "--strategy", strategy,
           "--out", out, "--layers", str(args.layers), "--hidden", str(args.hidden), "--vocab", str(args.vocab),
           "--seq", str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps),
           "--bucket", str(args.bucket), "--precision", args.precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env, timeout=900, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return [json.loads((Path(out) / f"{strategy}-w{nproc}-rank{r}.json").read_text()) for r in range(nproc)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="ddp", choices=STRATEGIES)
    parser.add_argument("--out", default=None)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="global batch (split over the ranks)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--bucket", type=int, default=200_000, help="ZeRO bucket sizes (elements)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per rank")
    parser.add_argument("--precision-table", choices=["both", "bf16", "no"], default="both",
                        help="which precisions to measure (default both: bf16 vs the paper, fp32 vs its analogue)")
    parser.add_argument("--precision", choices=["no", "bf16"], default="no",
                        help="bf16: mixed precision (DeepSpeed keeps bf16 weights/gradients and fp32 master "
                        "state; DDP autocasts fp32 weights), the setting of the paper's formulas")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    n = 2
    f = formulas(n)
    result: dict[str, Any] = {"benchmark": "zero_memory", "device": "cpu", "backend": "gloo", "ranks": n,
                              "model": f"gpt2 layers={args.layers} hidden={args.hidden} vocab={args.vocab} seq={args.seq}",
                              "global_batch": args.batch}
    precisions = ["bf16", "no"] if args.precision_table == "both" else [args.precision_table]
    for precision in precisions:
        args.precision = precision
        # bf16 is the paper's setting (its formulas); fp32 is compared with the fp32 analogue
        reference = "paper_mixed_precision" if precision == "bf16" else "fp32"
        with tempfile.TemporaryDirectory() as out:
            runs = {s: launch(n, s, args, out) for s in STRATEGIES}
            single = launch(1, "ddp", args, out)[0]
        params = runs["ddp"][0]["params"]
        per_rank = {s: max(r["bytes"] for r in rs) for s, rs in runs.items()}
        table = {}
        for s in STRATEGIES:
            measured_ratio = per_rank[s] / per_rank["ddp"]
            formula_ratio = f[reference][s] / f[reference]["ddp"]
            table[s] = {
                "bytes_per_rank": per_rank[s],
                "bytes_per_param": round(per_rank[s] / params, 2),
                "formula_bytes_per_param": round(f[reference][s], 2),
                "ratio_vs_ddp": round(measured_ratio, 4),
                "formula_ratio_vs_ddp": round(formula_ratio, 4),
                "ratio_error": round(abs(measured_ratio - formula_ratio) / formula_ratio, 4),
            }
        two = sum(r["step_seconds"] for r in runs["ddp"]) / n
        key = "bf16" if precision == "bf16" else "fp32"
        result["params"] = params
        result[key] = {
            "formulas": reference, "memory": table,
            "max_ratio_error": max(v["ratio_error"] for v in table.values()),
            "step_seconds": {"ddp_2_ranks": round(two, 4), "single_1_rank": round(single["step_seconds"], 4),
                             **{f"{s}_2_ranks": round(sum(r["step_seconds"] for r in runs[s]) / n, 4)
                                for s in STRATEGIES[1:]}},
            "step_time_ratio_2_vs_1_ranks": round(two / single["step_seconds"], 3),
        }
    result["goal_max_ratio_error"] = 0.10
    result["note"] = "CPU gloo: step times are a lower bound for GPU scaling"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
