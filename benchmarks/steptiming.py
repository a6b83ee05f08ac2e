"""Pieces the loop benchmarks share (``bench_overhead.py``, ``bench_llm.py``): the data order a
plain loop must follow to see tuneforge's batches, and a plugin that times tuneforge's steps.

Not a benchmark itself (``run_all.py`` runs ``bench_*.py`` only). Imports nothing heavy at load
time, so a benchmark's driver process stays free of torch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any


def stamp() -> tuple[float, float]:
    """(wall clock, CPU time of this process); perf_counter is system-wide monotonic on Linux."""
    return time.perf_counter(), time.process_time()


class SeededSampler:
    """tuneforge's documented data order (its EpochSampler): randperm seeded by (seed, epoch)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())


def step_clock(last_step: int, peak_rss: Callable[[], float]) -> Any:
    """A plugin recording a ``stamp()`` at fit start and after every step, each step's loss, the
    trainable parameter count, and ``peak_rss()`` at ``last_step`` (before the final checkpoint)."""
    from tuneforge import hookimpl
    from tuneforge.adapters import count_parameters

    class StepClock:
        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []
            self.losses: list[float] = []
            self.rss, self.trainable = 0.0, 0

        @hookimpl
        def tf_on_fit_start(self, run: Any) -> None:
            self.trainable = count_parameters(run.model)[0]
            self.times.append(stamp())

        @hookimpl
        def tf_on_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
            self.losses.append(metrics["loss"])
            self.times.append(stamp())
            if step == last_step:
                self.rss = peak_rss()

    return StepClock()
