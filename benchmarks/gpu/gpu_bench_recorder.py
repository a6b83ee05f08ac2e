"""A tuneforge observer plugin for the GPU checks (``plugins: [gpu_bench_recorder]`` in a run
config, with ``benchmarks/gpu`` on ``PYTHONPATH``): it records, without steering anything,

* a time stamp at ``tf_on_fit_start`` and at every ``tf_on_step_end`` (the loop reads the loss
  with ``.item()`` every step, so each stamp follows the step's GPU work),
* the per-step training loss,
* device memory: allocated after setup (model + optimizer built and prepared), allocated at the
  end of the last step (parameters, gradient buffers and optimizer state; activations freed),
  and the peak (``torch.cuda.max_memory_allocated``). On a CPU run (the dry run): live CPU
  tensor bytes found through the garbage collector, and the process's peak RSS,
* the parameter count (ZeRO-3 partitions counted whole, ``ds_numel``),

and writes them as JSON to the file named by ``GPU_BENCH_RECORD`` at ``tf_on_fit_end`` (rank 0).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from tuneforge import hookimpl

_record: dict[str, Any] = {}


def _cuda() -> Any:
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def _state_bytes(run: Any) -> int:
    """Device bytes held now: CUDA allocated, or on CPU every live tensor storage once."""
    cuda = _cuda()
    if cuda is not None:
        cuda.synchronize()
        return int(cuda.memory_allocated())
    from bench_zero_memory import live_tensor_bytes

    gc.collect()
    return live_tensor_bytes([], [])


def _optimizer_chain(optimizer: Any) -> list[str]:
    """Class names from the prepared optimizer down its ``.optimizer`` wrappers (e.g.
    AcceleratedOptimizer > DeepSpeedZeroOptimizer_Stage3 > AdamW)."""
    names = []
    while optimizer is not None and len(names) < 5:
        names.append(type(optimizer).__name__)
        optimizer = getattr(optimizer, "optimizer", None)
    return names


@hookimpl
def tf_on_fit_start(run: Any) -> None:
    cuda = _cuda()
    model = run.runtime.unwrap(run.model)
    _record.update(
        stamps=[], losses=[], memory_kind="cuda_allocated" if cuda is not None else "cpu_live_tensors",
        params=sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in model.parameters()),
        trainable=sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in model.parameters() if p.requires_grad),
        setup_bytes=_state_bytes(run), device=str(run.runtime.device), distributed=run.runtime.kind,
        optimizer=_optimizer_chain(run.optimizer),
    )
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    _record["stamps"].append(time.perf_counter())


@hookimpl
def tf_on_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    _record["stamps"].append(time.perf_counter())
    _record["losses"].append(float(metrics["loss"]))


@hookimpl
def tf_on_fit_end(run: Any, result: Any) -> None:
    cuda = _cuda()
    _record["step_end_bytes"] = _state_bytes(run)
    if cuda is not None:
        _record["peak_bytes"] = int(cuda.max_memory_allocated())
    else:
        _record["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    _record["peak_kind"] = "cuda_max_allocated" if cuda is not None else "cpu_peak_rss"
    target = os.environ.get("GPU_BENCH_RECORD")
    if target and run.runtime.is_main:
        Path(target).write_text(json.dumps(_record), encoding="utf-8")
