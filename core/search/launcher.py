"""Launch one trial as its own process group and report how it ended.

A trial with ``search.trial.nproc: 1`` is ``python -m tuneforge.search.trial``;
with more processes it is ``torchrun --standalone --nproc_per_node N -m
tuneforge.search.trial`` (each rank gets the same command line, so the same
parameters). The process group is killed as a whole on timeout or when the
controller stops; a crash, an out-of-memory kill or a non-finite loss ends this
trial only, and :func:`last_error_line` says why.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TRIAL_MODULE = "tuneforge.search.trial"
_ERROR_LINE = re.compile(r"^(error: .+|[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*)$")


def trial_command(config: str, overrides: list[str], spec: Path, nproc: int) -> list[str]:
    tail = ["-m", TRIAL_MODULE, "--spec", str(spec), "--config", config, *overrides]
    if nproc == 1:
        return [sys.executable, *tail]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *tail]


@dataclass
class ProcessResult:
    returncode: int
    wall_seconds: float
    error: str | None
    timed_out: bool = False


def last_error_line(log_text: str, returncode: int) -> str | None:
    """The line that says why a trial failed (``error: ...`` or an exception), or the signal."""
    if returncode == 0:
        return None
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
    # torchrun wraps a rank's failure in its own ChildFailedError; the rank's own line is more useful.
    useful = [ln for ln in errors if "ChildFailedError" not in ln and "torch.distributed.elastic" not in ln]
    if useful:
        return useful[-1]
    return lines[-1] if lines else f"exit code {returncode}"


class TrialProcess:
    """One running trial process group."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path | None = None) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        (log_path.parent / "command.txt").write_text(shlex.join(cmd) + "\n", encoding="utf-8")
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.started = time.time()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env}, cwd=cwd, start_new_session=True,
        )
        (log_path.parent / "trial.pid").write_text(str(self.proc.pid), encoding="utf-8")

    def kill(self, grace: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait(self, timeout: float | None = None) -> ProcessResult:
        timed_out = False
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
            rc = self.proc.wait()
        finally:
            self._log.close()
        wall = time.time() - self.started
        text = self.log_path.read_text(encoding="utf-8", errors="replace")[-20000:]
        error = last_error_line(text, rc)
        if timed_out:
            error = f"timed out after {timeout:.0f} s (search.trial.timeout_minutes)"
        return ProcessResult(rc, wall, error, timed_out)
