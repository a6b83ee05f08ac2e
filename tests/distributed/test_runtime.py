"""The single-process Runtime and the wrapper/collective helpers, in this process (no ranks)."""

from __future__ import annotations

import subprocess
import sys

import torch

from tuneforge.config import validate
from tuneforge.distributed import SingleProcessRuntime, create_runtime, resolve_strategy, unwrap, world_size


def single_runtime() -> SingleProcessRuntime:
    config = validate({"model": {"name_or_path": "m"}, "task": {"name": "classification"},
                       "data": {"train": "t.csv"}, "training": {"batch_size": 2}})
    runtime = create_runtime(config, resolve_strategy(config, env={}))
    assert isinstance(runtime, SingleProcessRuntime)
    return runtime


def test_single_process_runtime_communicates_nothing() -> None:
    rt = single_runtime()
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(rt.all_reduce(t, "sum"), t) and rt.all_reduce(t) is not t
    assert rt.any_rank(True) and not rt.any_rank(False)
    assert rt.broadcast_object({"a": 1}) == {"a": 1} and rt.all_gather_object(3) == [3]
    assert rt.mean(torch.tensor(2.5)) == 2.5 and world_size() == 1


def test_skip_batches_and_unwrap_of_prepared_objects() -> None:
    rt = single_runtime()
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = torch.utils.data.DataLoader(list(range(6)), batch_size=2)
    p_model, _, p_scheduler, p_loader = rt.prepare(model, optimizer, scheduler, loader)
    assert p_scheduler is not scheduler and rt.unwrap(p_scheduler) is scheduler
    assert rt.unwrap(p_model) is model and rt.unwrap(torch.compile(model)) is model
    assert [b.tolist() for b in rt.skip_batches(p_loader, 2)] == [[4, 5]]
    assert rt.skip_batches(p_loader, 0) is p_loader
    wrapped = torch.nn.Module()
    wrapped.module = model  # the attribute DDP and the DeepSpeed engine keep the model in
    assert unwrap(wrapped) is model and unwrap("not a model") == "not a model"


def test_importing_the_package_imports_neither_accelerate_nor_deepspeed() -> None:
    code = "import sys, tuneforge.distributed, tuneforge.tasks; print(sorted({'accelerate', 'deepspeed'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
