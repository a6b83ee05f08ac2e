"""The trial process: an ordinary training run plus a reporter plugin.

The controller launches, for every trial (one process, or one per rank under
``torchrun``)::

    python -m tuneforge.search.trial --spec <trial_dir>/trial_spec.json --config base.yaml key=value ...

which loads the config with the sampled parameters as overrides (every rank gets
the same ones: they are on the command line, and the run's rank-consistency
check compares the resolved configs), registers :class:`TrialReporter` and calls
:func:`tuneforge.run.train`. The reporter, on every validation evaluation, writes
the metrics to ``trial_evaluations.jsonl`` and — on rank 0 — reports the
objective to the study's storage and asks its pruner; the decision is broadcast to
all ranks through the Runtime, and every rank asks the run to stop
(``run.request_stop(..., status="pruned")``): the run ends cleanly, the process
exits 0 and ``trial_status.json`` says ``pruned``. A PBT segment ends the same way
(status ``paused``) after its checkpoint at ``stop_at_step``; a resumed PBT member
takes the sampled values with ``run.set_hyperparameters`` at fit start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from tuneforge import jsonio
from tuneforge.dotted import get_dotted
from tuneforge.hookspecs import hookimpl
from tuneforge.search.objective import EVALUATIONS, INFO, STATUS

log = logging.getLogger("tuneforge.search")
SPEC = "trial_spec.json"


class TrialReporter:
    """Observer plugin of a trial process (see the module docstring)."""

    def __init__(self, spec: dict[str, Any], run_dir: Path) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.started = float(spec.get("launched_at") or time.time())
        self.fit_start: float | None = None
        self._trial: Any = None
        if spec.get("controller_pid"):
            self._watch(int(spec["controller_pid"]))

    # -- controller watchdog ------------------------------------------------------------

    def _watch(self, pid: int) -> None:
        """End this process if the controller dies (kill -9 included), so no orphan trains on."""

        def loop() -> None:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    os._exit(75)
                except PermissionError:
                    pass

        threading.Thread(target=loop, daemon=True, name="tuneforge-controller-watchdog").start()

    # -- storage ----------------------------------------------------------------------------

    def _optuna_trial(self) -> Any:
        if self._trial is None:
            import optuna

            from tuneforge.search.pruners import build_pruner
            from tuneforge.search.storage import open_storage

            storage = open_storage(self.spec["storage"], heartbeat_seconds=None)
            pruner = build_pruner(_pruner_config(self.spec["pruner"]))
            study = optuna.load_study(study_name=self.spec["study_name"], storage=storage, pruner=pruner,
                                      sampler=optuna.samplers.RandomSampler())
            self._trial = optuna.trial.Trial(study, int(self.spec["trial_id"]))
        return self._trial

    # -- hooks ----------------------------------------------------------------------------

    @hookimpl
    def tf_on_fit_start(self, run: Any) -> None:
        self.fit_start = time.time()
        # Every rank records the searched values it actually trains with (rank-consistency evidence).
        resolved = run.config.model_dump(mode="json")
        seen = {key: get_dotted(resolved, key) for key in self.spec.get("params", {})}
        rank = run.runtime.process_index
        (self.run_dir / f"trial_rank{rank}.json").write_text(
            json.dumps({"rank": rank, "world_size": run.runtime.num_processes, "params": seen}), encoding="utf-8")
        if self.spec.get("apply_hparams") and run.optimizer is not None:
            t = run.config.training  # resuming restored the checkpoint's values; PBT continues with new ones
            run.set_hyperparameters(lr=t.lr, weight_decay=t.weight_decay, eps=t.eps)
        if run.is_main:
            from tuneforge.adapters import count_parameters

            trainable, total = count_parameters(run.model)
            self._write_info({"trainable_params": trainable, "total_params": total,
                              "setup_seconds": round(self.fit_start - self.started, 3)})

    @hookimpl
    def tf_on_evaluate(self, run: Any, step: int, split: str, metrics: dict[str, float]) -> None:
        if split != "validation":
            return
        decision = False
        if run.is_main:
            with (self.run_dir / EVALUATIONS).open("a", encoding="utf-8") as fh:
                fh.write(jsonio.dumps({"step": step, "time": round(time.time(), 3), "metrics": metrics}) + "\n")
            name = self.spec.get("report_metric")
            if name and name in metrics and self.spec.get("prune"):
                trial = self._optuna_trial()
                trial.report(float(metrics[name]), step)
                decision = bool(trial.should_prune())
        decision = bool(run.runtime.broadcast_object(decision))
        if decision:
            run.request_stop(f"pruned by the study's pruner at step {step}", status="pruned")

    @hookimpl
    def tf_on_checkpoint(self, run: Any, step: int, path: Path) -> None:
        stop = self.spec.get("stop_at_step")
        if stop is not None and step >= int(stop):
            run.request_stop(f"PBT segment ends at step {stop}", status="paused")

    @hookimpl
    def tf_on_fit_end(self, run: Any, result: Any) -> None:
        if run.is_main:
            self._write_info({"train_loop_seconds": round(result.train_seconds, 3),
                              "fit_end": time.time()})

    def _write_info(self, extra: dict[str, Any]) -> None:
        path = self.run_dir / INFO
        info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        info.update(extra)
        info.setdefault("fit_start", self.fit_start)
        path.write_text(json.dumps(info, indent=2), encoding="utf-8")


def _pruner_config(raw: dict[str, Any]) -> Any:
    from tuneforge.config import SearchPruner

    return SearchPruner.model_validate(raw)


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    from tuneforge.config import load_config
    from tuneforge.errors import TuneforgeError
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.run import train

    parser = argparse.ArgumentParser(prog="python -m tuneforge.search.trial")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    run_dir = Path(args.spec).parent
    status: dict[str, Any] = {"status": "failed"}
    try:
        config = load_config(args.config, args.overrides)
        pm = PluginManager.default(config.plugins)
        pm.register(TrialReporter(spec, run_dir), name="tuneforge-search-trial")
        results = train(config, pm)
        status = {"status": results.get("status", "completed"), "step": results.get("steps")}
        return 0
    except TuneforgeError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        status = {"status": "failed", "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        return 2
    finally:
        if _is_main_rank():
            status["exit_time"] = time.time()
            (run_dir / STATUS).write_text(json.dumps(status), encoding="utf-8")


def exit_now(code: int) -> NoReturn:
    """End the trial process without the interpreter's module teardown.

    Finalising torch, transformers and scikit-learn takes 1-2 s after the run is over
    (measured on a 2-core CPU: a third of a tiny trial's launch overhead), and the
    controller's worker slot waits for it. ``atexit`` handlers (tracker flushes, logging)
    still run and stdio is flushed; only the garbage collection of modules is skipped.
    """
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


if __name__ == "__main__":
    exit_now(main())
