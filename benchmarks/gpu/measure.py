"""Pure functions of the GPU checks: FLOP and memory formulas, loss comparison, timing
summaries and the JSON Lines output. No torch import at module level (the default test
suite imports this file in milliseconds)."""

from __future__ import annotations

import itertools
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: the shared bench helpers

from bench_zero_memory import formulas

#: Dense bf16 tensor-core peak (FLOP/s) by the vendor's datasheet, keyed by a substring of the
#: CUDA device name. H200 SXM and H100 SXM: 989.4 TFLOP/s (without sparsity).
DATASHEET_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}

MFU_FORMULA = ("MFU = flops_per_token * tokens_per_s / peak_bf16_flops; full fine-tuning: flops_per_token = "
               "6 * N (forward 2N + backward 4N), N = parameters taking part in matrix products (all but the "
               "input embedding); gradient checkpointing's recomputed forward is not counted (model FLOPs)")
MFU_ATTENTION_FORMULA = "flops_per_token = 6 * N + 12 * layers * hidden * seq_len (PaLM, appendix B)"
LORA_FORMULA = ("LoRA: frozen weights get no weight gradients, so the work done is about 4 * N per token "
                "(forward 2N + activation gradients 2N; the adapters add < 1%); mfu_6n reports the same "
                "throughput in full fine-tuning's model FLOPs for comparison")
TOLERANCE_RULE = ("bf16 (8-bit mantissa, unit roundoff 2^-8 = 0.39%) vs fp32: each of the first 20 step "
                  "losses within rel_tol of the fp32 loss, |a - b| <= rel_tol * |b|")
# ~5 bf16 ulps. Measured here (CPU, 2026-12-02): SmolLM2-135M's loss on two packed 4x256 batches, bf16
# weights + autocast vs fp32, differs by 0.08% and 0.13%; 2% leaves room for 20 AdamW steps to compound it.
BF16_LOSS_REL_TOL = 0.02


def peak_bf16_flops(device_name: str) -> float | None:
    """The datasheet's dense bf16 peak of a CUDA device, or None when the name is not in the table."""
    for key, flops in DATASHEET_BF16_PEAK.items():
        if key in device_name:
            return flops
    return None


def matmul_params(n_params: int, embedding_params: int) -> int:
    """N of the MFU formula: every parameter except the input embedding table (a lookup, no FLOPs)."""
    return n_params - embedding_params


def flops_per_token(n_matmul: int, mode: str, layers: int = 0, hidden: int = 0, seq_len: int = 0) -> float:
    """Training FLOPs per token: ``full`` 6N, ``lora`` 4N, ``full+attention`` 6N + 12*L*h*s."""
    if mode == "full":
        return 6.0 * n_matmul
    if mode == "lora":
        return 4.0 * n_matmul
    if mode == "full+attention":
        return 6.0 * n_matmul + 12.0 * layers * hidden * seq_len
    raise ValueError(f"mode must be full, lora or full+attention, got {mode!r}")


def mfu(flops_token: float, tokens_per_s: float, peak_flops: float) -> float:
    return flops_token * tokens_per_s / peak_flops


def zero3_state_bytes(n_params: int, world_size: int, offload_optimizer: bool) -> float:
    """Device bytes of parameters + gradients + optimizer state per rank under ZeRO-3 with bf16
    (the ZeRO paper: 2P bf16 parameters + 2P bf16 gradients + 12P fp32 master/momentum/variance,
    all partitioned: 16P/N). With the optimizer offloaded the 12P live in CPU memory: 4P/N."""
    if offload_optimizer:
        return 4.0 * n_params / world_size
    return formulas(world_size)["paper_mixed_precision"]["zero3"] * n_params


def compare_losses(measured: list[float], reference: list[float], rel_tol: float = BF16_LOSS_REL_TOL) -> dict[str, Any]:
    """Step-by-step relative difference of two loss curves of the same length."""
    if len(measured) != len(reference) or not measured:
        raise ValueError(f"loss curves must be non-empty and of equal length, got {len(measured)} and {len(reference)}")
    rel = [abs(a - b) / abs(b) for a, b in zip(measured, reference)]
    finite = all(math.isfinite(a) and math.isfinite(b) for a, b in zip(measured, reference))
    worst = max(rel) if finite else float("inf")
    return {"max_rel_diff": round(worst, 6), "mean_rel_diff": round(statistics.fmean(rel), 6) if finite else None,
            "max_abs_diff": round(max(abs(a - b) for a, b in zip(measured, reference)), 6) if finite else None,
            "rel_tol": rel_tol, "within_tolerance": finite and worst <= rel_tol}


def step_seconds(stamps: list[float], warmup: int) -> list[float]:
    """Durations between consecutive time stamps (stamp 0: the loop's start), first ``warmup`` left out."""
    durations = [b - a for a, b in itertools.pairwise(stamps)]
    if len(durations) <= warmup:
        raise ValueError(f"{len(durations)} steps timed; need more than the {warmup} warm-up steps")
    return durations[warmup:]


def throughput(stamps: list[float], warmup: int, tokens_per_step: int) -> dict[str, float]:
    steps = step_seconds(stamps, warmup)
    median = statistics.median(steps)
    return {"step_s_median": round(median, 5), "tokens_per_s": round(tokens_per_step / median, 1),
            "timed_steps": len(steps)}


def loss_falls(losses: list[float], window: int = 5) -> dict[str, Any]:
    """Mean of the first ``window`` losses vs the last ``window``."""
    window = max(1, min(window, len(losses) // 2))
    first, last = statistics.fmean(losses[:window]), statistics.fmean(losses[-window:])
    return {"loss_first_mean": round(first, 4), "loss_last_mean": round(last, 4), "loss_falls": last < first}


def gib(n_bytes: float) -> float:
    return round(n_bytes / 2**30, 4)


def finite_numbers(node: Any) -> list[str]:
    """Dotted paths of every number in ``node`` that is not finite (NaN, inf)."""
    bad: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(path)

    walk(node, "")
    return bad


class JsonLines:
    """Each line printed to stdout (flushed) and appended to ``path``, which starts empty."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")
        self.lines: list[dict[str, Any]] = []

    def emit(self, line: dict[str, Any]) -> None:
        text = json.dumps(line, allow_nan=True, default=str)
        print(text, flush=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text + "\n")
        self.lines.append(line)
