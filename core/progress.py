"""Progress on the main process: a tqdm bar on a terminal, plain log lines otherwise.

On a terminal: ``train:  25%|██▌      | 10/40 [00:02<00:06, 4.52step/s, loss=0.6931, lr=3.00e-03]``.
Elsewhere (CI, SLURM logs), every ``training.log_every_n_steps`` steps:
``step 10/40 loss 0.6931 lr 3.00e-03 4.52 steps/s eta 0:00:06``.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("tuneforge")


class Progress:
    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, every: int = 10) -> None:
        self.total, self.step, self.every = total, initial, every
        self.enabled = enabled
        self.start_time, self.start_step = time.perf_counter(), initial
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, lr: float) -> None:
        if not self.enabled:
            return
        done = step - self.step
        self.step = step
        if self.bar is not None:
            self.bar.update(done)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        elif step % self.every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.start_time
            rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            log.info(
                "step %d/%d loss %.4f lr %.2e %.2f steps/s eta %s",
                step, self.total, loss, lr, rate, _fmt(eta),
            )

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
