"""The progress display: a tqdm bar on a terminal, log lines with steps/s and ETA elsewhere."""

from __future__ import annotations

import io
import logging
import re
import sys

from tuneforge.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_when_not_a_terminal(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="tuneforge")
    progress = Progress(total=40, every=10)
    assert progress.bar is None
    for step in range(1, 41):
        progress.update(step, loss=1.0 / step, lr=3e-3)
    progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert re.fullmatch(r"step 10/40 loss 0\.1000 lr 3\.00e-03 [\d.]+ steps/s eta \d+:\d\d:\d\d", lines[0])
    assert lines[-1].startswith("step 40/40 loss 0.0250") and lines[-1].endswith("eta 0:00:00")


def test_bar_on_a_terminal_shows_rate_eta_loss_and_lr(monkeypatch):
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", screen)
    progress = Progress(total=40, initial=10)
    assert progress.bar is not None
    progress.update(20, loss=0.5, lr=1e-4)
    progress.bar.refresh()
    shown = screen.getvalue().split("\r")[-1]
    progress.close()
    assert "20/40" in shown and "loss=0.5000" in shown and "lr=1.00e-04" in shown
    assert re.search(r"<\d\d:\d\d", shown), shown  # ETA
    assert "step/s" in shown or "s/step" in shown, shown


def test_disabled_on_other_ranks(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    caplog.set_level(logging.INFO, logger="tuneforge")
    progress = Progress(total=10, enabled=False, every=1)
    progress.update(1, 0.1, 0.1)
    progress.write("hello")
    assert progress.bar is None and not caplog.records
