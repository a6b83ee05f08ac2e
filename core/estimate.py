"""Peak memory per rank of a training run, estimated before anything loads.

:func:`estimate` reads the model's config only (``config.json`` of a local or ``pkg:``
directory or of the local hub cache, or a GGUF file's header) and builds the module table of
the architecture (:func:`module_table`: every embedding, linear layer and norm with the names
Hugging Face gives them), from which it counts parameters, LoRA adapters and QLoRA's quantised
weights. Then, per rank (``P`` parameters, ``T`` trainable, ``N`` ranks):

* weights: ``P x`` the parameter dtype (``model.dtype``; DeepSpeed with mixed precision keeps
  16-bit weights; QLoRA: 4-bit linear layers at 0.5 byte plus block constants, the rest fp32
  as ``prepare_model_for_kbit_training`` leaves it); ZeRO-3 divides them by ``N``.
* gradients: ``T x`` the parameter dtype (DDP also keeps its bucket copy); ZeRO-2/3 divide by ``N``.
* optimizer: torch AdamW keeps m and v in the parameter dtype (``8T`` in fp32); DeepSpeed keeps
  fp32 master weights, m and v (``12T``, the ZeRO paper's K); ZeRO-1/2/3 divide by ``N``.
  CPU offload moves the optimizer (and, ZeRO-3, the parameters) off the device.
* activations: what autograd saves for backward, per token and layer (see :data:`ACTIVATIONS`),
  times batch x ``data.max_length``; gradient checkpointing keeps one hidden state per layer plus
  one layer being recomputed.

The peak is their sum: the rank holds weights and optimizer state throughout, and the
activations of a batch meet the gradients being accumulated in backward.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tuneforge.architecture import (  # noqa: F401 - re-exported: the estimator's public names
    DECODER_TYPES,
    ENCODER_TYPES,
    SUPPORTED_TYPES,
    Architecture,
    Module,
    architecture_from_config,
    count_parameters,
    gguf_config,
    hf_config,
    lora_targets,
    matches,
    module_table,
    read_model_config,
)
from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError

if TYPE_CHECKING:
    from tuneforge.distributed import Strategy

log = logging.getLogger("tuneforge")

MIB, GIB = 2**20, 2**30

#: Bytes per element of the dtypes a run can name.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: 4-bit NF4/FP4 weights: half a byte, plus an fp32 absmax per 64-value block (0.0625 B/param),
#: or with double quantisation an 8-bit absmax per block and an fp32 constant per 256 blocks.
QLORA_BYTES = {(4, True): 0.5 + 1 / 64 + 4 / (64 * 256), (4, False): 0.5 + 4 / 64, (8, True): 1.0, (8, False): 1.0}
#: Mixed precision: matmul inputs are saved in 16 bits, norms, softmax and the loss in fp32.
MIXED_ACTIVATION_FACTOR = 0.6
#: Memory a CUDA process holds besides tensors (context, kernels, allocator), counted when
#: judging whether a run fits a device.
CUDA_RESERVE = 512 * MIB

#: Elements saved per token for backward, measured with ``torch.autograd.graph.saved_tensors_hooks``
#: on the transformers implementations (fp32, training mode): per layer, as multiples of the hidden
#: size ``h``, the KV width ``kv`` (KV heads x head dim), the MLP width ``i`` and ``a x s`` (heads x
#: sequence: attention probabilities and their dropout mask, absent under SDPA); and outside the
#: layers, ``h`` (embeddings, final norm) and ``V`` (the fp32 logits the loss saves). The same
#: shape as Korthikanti et al.'s ``sbh(34 + 5as/h)`` bytes per layer, with the coefficients of
#: these implementations (a gated SiLU MLP, GPT-2's tanh GELU, dropout or none).
ACTIVATIONS = {
    "decoder": {"h": 9, "kv": 1, "i": 4, "as": 0, "outer_h": 3, "outer_v": 1},
    "decoder-eager": {"h": 11, "kv": -1, "i": 4, "as": 1, "outer_h": 3, "outer_v": 1},
    "gpt2": {"h": 10, "kv": 0, "i": 5, "as": 3, "outer_h": 3, "outer_v": 1},
    "encoder": {"h": 10, "kv": 0, "i": 2, "as": 3, "outer_h": 3, "outer_v": 0},
}

# -- the estimate ------------------------------------------------------------------------------------


@dataclass
class Estimate:
    """Bytes per rank on the device, by part, and what it was computed from."""

    model: str
    architecture: Architecture
    strategy: str
    world_size: int
    parameters: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    activations_without_checkpointing: int
    activations_with_checkpointing: int
    gradient_checkpointing: bool
    offloaded_to_cpu: int
    tokens_per_micro_batch: int
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def fits(self, device_bytes: int) -> bool:
        return self.peak + CUDA_RESERVE <= device_bytes

    def to_json(self, device_bytes: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "architecture": asdict(self.architecture), "strategy": self.strategy,
            "world_size": self.world_size, "parameters": self.parameters, "trainable_parameters": self.trainable,
            "tokens_per_micro_batch": self.tokens_per_micro_batch,
            "per_rank_bytes": {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                               "activations": self.activations, "peak": self.peak},
            "activations_bytes": {"without_checkpointing": self.activations_without_checkpointing,
                                  "with_checkpointing": self.activations_with_checkpointing},
            "gradient_checkpointing": self.gradient_checkpointing,
            "offloaded_to_cpu_bytes": self.offloaded_to_cpu,
            "peak_gib": round(self.peak / GIB, 3),
            "notes": self.notes,
        }
        if device_bytes is not None:
            out.update(device_bytes=device_bytes, fits=self.fits(device_bytes),
                       headroom_bytes=device_bytes - CUDA_RESERVE - self.peak)
        return out

    def table(self, device_bytes: int | None = None) -> str:
        """The human-readable breakdown."""
        ckpt = "on" if self.gradient_checkpointing else "off"
        rows = [
            ("weights", self.weights, f"{self.parameters:,} parameters"),
            ("gradients", self.gradients, f"{self.trainable:,} trainable"),
            ("optimizer", self.optimizer, "AdamW"),
            ("activations", self.activations,
             f"{self.tokens_per_micro_batch:,} tokens per micro-batch, checkpointing {ckpt} "
             f"(off {_gib(self.activations_without_checkpointing)}, on {_gib(self.activations_with_checkpointing)})"),
            ("peak per rank", self.peak, ""),
        ]
        lines = [f"memory estimate for {self.model} ({self.architecture.model_type}), {self.strategy}"]
        lines += [f"  {name:<14} {_gib(value):>12}  {detail}".rstrip() for name, value, detail in rows]
        if self.offloaded_to_cpu:
            lines.append(f"  {'CPU (offload)':<14} {_gib(self.offloaded_to_cpu):>12}  per rank, in host memory")
        if device_bytes is not None:
            headroom = device_bytes - CUDA_RESERVE - self.peak
            verdict = "fits" if headroom >= 0 else "does NOT fit"
            lines.append(f"  {verdict} in {_gib(device_bytes)}: headroom {_gib(headroom)} "
                         f"(after {CUDA_RESERVE // MIB} MiB for the CUDA context)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= 0.1 * GIB else f"{n / MIB:.1f} MiB"


def activation_bytes(arch: Architecture, batch: int, seq: int, element_bytes: float, checkpointing: bool) -> int:
    """Bytes autograd saves for one micro-batch (see :data:`ACTIVATIONS`)."""
    c = ACTIVATIONS[arch.family]
    kv = arch.kv_heads * arch.head_dim
    layer = c["h"] * arch.hidden + c["kv"] * kv + c["i"] * arch.intermediate + c["as"] * arch.heads * seq
    outer = c["outer_h"] * arch.hidden + c["outer_v"] * arch.vocab * 4 / element_bytes  # logits: fp32
    per_token = (arch.hidden * arch.layers + layer) if checkpointing else layer * arch.layers
    return int(batch * seq * (per_token + outer) * element_bytes)


def _adapted(config: RunConfig, arch: Architecture, table: list[Module], total: int, w: int,
             notes: list[str]) -> tuple[int, float, int]:
    """(trainable parameters, weight bytes, bytes per trainable element) under ``config.adapter``."""
    adapter = config.adapter
    if adapter is None:
        trainable = total
        weights = float(total * w)
    elif adapter.type in ("lora", "dora", "qlora"):
        opts = adapter.options()
        targets = lora_targets(arch, opts.get("target_modules"))
        if not targets:
            raise ConfigError(f"adapter.target_modules {opts.get('target_modules')!r} match no linear layer of this "
                              f"{arch.model_type} model")
        r = int(opts.get("r", 8))
        trainable = sum(r * (m.fan_in + m.fan_out) for m in targets)
        if adapter.type == "dora":
            trainable += sum(m.fan_out for m in targets)  # DoRA's magnitude vector
        saved = [m for m in table if matches(opts.get("modules_to_save") or [], m.name)]
        trainable += sum(m.params for m in saved)  # PEFT trains a copy of each
        if adapter.type == "qlora":
            bits, double = int(opts.get("bits", 4)), bool(opts.get("double_quant", True))
            quantised = sum(m.params for m in table if m.kind == "linear" and m.layer is not None)
            weights = quantised * QLORA_BYTES[(bits, double)] + (total - quantised + trainable) * 4
            w = 4  # adapters, norms, embeddings and head in fp32 after prepare_model_for_kbit_training
            notes.append(f"QLoRA: {quantised:,} linear weights at {QLORA_BYTES[(bits, double)]:.3f} byte each")
        else:
            weights = float((total + trainable) * w)
        notes.append(f"{adapter.type}: r={r} on {len({m.name.split('.')[-1] for m in targets})} module kinds, "
                     f"{len(targets)} layers; the base is frozen (no gradients, no optimizer state)")
    else:
        raise ConfigError(f"adapter.type '{adapter.type}': tuneforge estimate counts lora, dora and qlora adapters")

    return trainable, weights, w


def estimate(config: RunConfig, world_size: int | None = None, strategy: Strategy | None = None) -> Estimate:
    """The memory estimate of ``config`` per rank under ``strategy`` (default: resolved from the
    config and the environment, ``world_size`` overriding the launcher's)."""
    import os

    from tuneforge.distributed import resolve_strategy

    if strategy is None:
        env = dict(os.environ)
        if world_size is not None:
            env["WORLD_SIZE"] = str(world_size)
        strategy = resolve_strategy(config, env)
    model_config = read_model_config(config)
    arch = architecture_from_config(model_config)
    table = module_table(arch)
    n, t = strategy.world_size, config.training
    notes: list[str] = []
    total = sum(m.params for m in table)
    deepspeed = strategy.kind == "deepspeed"
    stage = (strategy.zero_stage or 0) if deepspeed else 0
    mixed = t.mixed_precision != "no"
    dtype = config.model.dtype
    if dtype == "auto":  # the checkpoint's own dtype (a GGUF model is de-quantised to float32)
        named = str(model_config.get("dtype") or model_config.get("torch_dtype") or "float32")
        dtype = named.removeprefix("torch.") if named.removeprefix("torch.") in DTYPE_BYTES else "float32"
    w = 2 if deepspeed and mixed else DTYPE_BYTES[dtype]

    trainable, weights, w = _adapted(config, arch, table, total, w, notes)
    gradients = float(trainable * w)  # gradients take the dtype of their parameters
    if strategy.kind == "ddp":
        gradients *= 2  # DDP's reducer keeps a flat bucket copy beside every .grad
        notes.append("DDP: gradients counted twice (.grad and the reducer's buckets)")
    optimizer = float(trainable * (12 if deepspeed else 2 * w))
    cpu = 0.0
    if stage >= 1:
        optimizer /= n
    if stage >= 2:
        gradients /= n
    if stage == 3:  # partitioned, plus one layer gathered for its forward/backward
        gathered = max(sum(m.params for m in table if m.layer == k) for k in range(arch.layers)) * w
        if strategy.offload_params:
            cpu += weights / n
            weights = float(gathered)
        else:
            weights = weights / n + gathered
    if strategy.offload_optimizer:
        cpu += optimizer
        optimizer = 0.0

    element = DTYPE_BYTES[dtype] * (MIXED_ACTIVATION_FACTOR if mixed and dtype == "float32" else 1)
    if config.adapter is not None and config.adapter.type == "qlora":
        element = 2
    seq = config.data.max_length
    off = activation_bytes(arch, t.batch_size, seq, element, checkpointing=False)
    on = activation_bytes(arch, t.batch_size, seq, element, checkpointing=True)
    ckpt = config.distributed.gradient_checkpointing
    return Estimate(
        model=config.model.name_or_path, architecture=arch, strategy=strategy.describe(), world_size=n,
        parameters=total, trainable=trainable, weights=int(weights), gradients=int(gradients),
        optimizer=int(optimizer), activations=on if ckpt else off, activations_without_checkpointing=off,
        activations_with_checkpointing=on, gradient_checkpointing=ckpt, offloaded_to_cpu=int(cpu),
        tokens_per_micro_batch=t.batch_size * seq, notes=notes,
    )


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str, option: str = "--gpu-memory") -> int:
    """``80GiB``, ``24GB``, ``512MiB``, ``1.5TB`` or a number of bytes -> bytes."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = found.group(2).lower() if found else ""
    if not found or unit not in _UNITS or float(found.group(1)) <= 0:
        raise ConfigError(f"{option} '{text}': give a positive size such as 80GiB, 24GB or 512MiB "
                          f"(units: {', '.join(u for u in ('B', 'KB', 'MB', 'GB', 'TB', 'KiB', 'MiB', 'GiB', 'TiB'))})")
    return int(float(found.group(1)) * _UNITS[unit])


def describe_fit(est: Estimate, device_bytes: int, device: str = "the device") -> str | None:
    """A warning line when ``est`` does not fit ``device_bytes``, else None."""
    if est.fits(device_bytes):
        return None
    return (f"estimated peak memory per rank {_gib(est.peak)} (+{CUDA_RESERVE // MIB} MiB CUDA context) exceeds "
            f"{device} ({_gib(device_bytes)}); see `tuneforge estimate` for the breakdown and try an adapter, "
            "gradient checkpointing, a smaller batch, mixed precision or a higher ZeRO stage")


def warn_if_over_device_memory(config: RunConfig, strategy: Strategy) -> None:
    """Preflight, on a CUDA machine: warn (never fail) when the estimate exceeds GPU 0's memory.
    An estimate that cannot be made (an architecture not counted here) is logged at debug level."""
    import torch

    if not torch.cuda.is_available():
        return
    try:
        est = estimate(config, strategy=strategy)
    except Exception as exc:  # an estimate is advice: nothing about it may stop a run
        log.debug("no memory estimate: %s", exc)
        return
    props = torch.cuda.get_device_properties(0)
    if (warning := describe_fit(est, props.total_memory, f"GPU 0 ({props.name})")) is not None:
        log.warning(warning)
