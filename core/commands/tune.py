"""``tuneforge tune --config X --budget 30m [--workers N] [--nproc N] [--library L] [key=value ...]``.

One command for "the best model this config can give in this much time" (docs/library.md):

1. picks the strategy (``portfolio`` when the study library has entries, else ``tpe``; a
   ``search.strategy`` set in the config is kept) and the pruner (asynchronous successive
   halving, unless the config sets one);
2. runs the study's first trial alone and times it (with ``--resume``: the median of the
   stored trials), then plans trials and workers for the rest of the budget
   (:func:`plan_budget`, a pure function) and continues the study with a deadline;
3. trains the best recipe once more with ``output.export=true`` (the exported model) and
   renders its report (``tuneforge report``);
4. prints one JSON object on stdout (the log goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneforge.commands import stdout_kept_for_results
from tuneforge.commands.train import add_config_arguments
from tuneforge.errors import ConfigError

#: Mean cost of a trial under successive halving, as a fraction of a full trial (an estimate for
#: planning; the study's deadline is what holds the budget).
PRUNED_COST = 0.6
MAX_TRIALS = 500


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search, then train and export the best recipe, within a wall-clock budget")
    add_config_arguments(p)
    p.add_argument("--budget", required=True, help="wall-clock budget: 30m, 2h, 1h30m, 90s (a bare number: minutes)")
    p.add_argument("--workers", type=int, default=None, help="trials at once (default: planned from the machine)")
    p.add_argument("--nproc", type=int, default=None, help="processes per trial (search.trial.nproc)")
    p.add_argument("--library", default=None, help="study library (default: search.library or $TUNEFORGE_LIBRARY)")
    p.add_argument("--resume", action="store_true", help="continue the study in its storage instead of a new one")
    p.add_argument("--no-final", action="store_true", help="skip the final training run of the best recipe")
    p.set_defaults(func=run)


def parse_budget(text: str) -> float:
    """Seconds in ``30m``, ``2h``, ``1h30m``, ``90s``, ``1.5h`` or a bare number of minutes."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", s).strip():
        raise ConfigError(f"--budget '{text}': give a duration such as 30m, 2h, 1h30m or 90s")
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"--budget '{text}' must be more than zero")
    return seconds


@dataclass(frozen=True)
class BudgetPlan:
    """How a budget is spent: ``n_trials`` (all together, the timed one included) on
    ``workers`` at once, ``search_seconds`` of search, then ``final_seconds`` of final training."""

    n_trials: int
    workers: int
    search_seconds: float
    final_seconds: float
    trial_seconds: float


def plan_budget(budget_s: float, trial_s: float, *, elapsed_s: float = 0.0, trials_done: int = 1, cores: int = 1,
                gpus: int = 0, nproc: int = 1, workers: int | None = None, pruning: bool = True,
                final: bool = True) -> BudgetPlan:
    """Plan the rest of a budget from one full trial's wall time ``trial_s``.

    Workers: one per ``nproc`` GPUs on a GPU machine; on CPUs one per 2 cores (at most 4) so
    each trial keeps 2 threads; ``workers`` overrides. Parallel CPU trials share the cores, so
    each takes ``workers`` times longer; trials under successive halving cost
    :data:`PRUNED_COST` of a full one on average. The final training run is one full trial."""
    if budget_s <= 0 or trial_s <= 0:
        raise ConfigError(f"budget ({budget_s:.0f} s) and trial time ({trial_s:.1f} s) must be positive")
    if workers is None:
        workers = max(1, gpus // nproc) if gpus else max(1, min(4, cores // (2 * nproc)))
    final_s = trial_s if final else 0.0
    search_s = max(0.0, budget_s - elapsed_s - final_s)
    slowdown = 1.0 if gpus else float(workers)
    per_trial = trial_s * slowdown * (PRUNED_COST if pruning else 1.0)
    more = math.floor(search_s * workers / per_trial) if per_trial > 0 else 0
    n_trials = max(trials_done, min(MAX_TRIALS, trials_done + more))
    return BudgetPlan(n_trials=n_trials, workers=max(1, min(workers, n_trials - trials_done or 1)),
                      search_seconds=round(search_s, 1), final_seconds=round(final_s, 1), trial_seconds=trial_s)


def _gpus() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # no torch build with CUDA: a CPU machine
        return 0


def run(args: argparse.Namespace) -> int:
    from tuneforge.config import load_config
    from tuneforge.search.library import library_location, open_library
    from tuneforge.search.runner import StudyRunner

    started = time.time()
    budget = parse_budget(args.budget)

    def echo(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    config = load_config(args.config, list(args.overrides))
    if config.search is None:
        raise ConfigError(f"{args.config}: tune needs a 'search:' section with search.params (see docs/search.md)")
    search = config.search
    overrides = list(args.overrides)
    location = library_location(args.library or search.library)
    if location:
        overrides.append(f"search.library={json.dumps(location)}")
    library = open_library(location) if location else None
    if "strategy" in search.model_fields_set:
        strategy = search.strategy
        echo(f"tune: strategy {strategy} (set in the config)")
    else:
        entries = library.count() if library is not None else 0
        strategy = "portfolio" if entries else "tpe"
        echo(f"tune: strategy {strategy} ({entries} library entries"
             + (f" in {library.location})" if library is not None else ")"))
        overrides.append(f"search.strategy={strategy}")
    if search.pruner.type == "none" and "pruner" not in search.model_fields_set:
        overrides.append("search.pruner.type=successive_halving")
    if args.nproc:
        overrides.append(f"search.trial.nproc={args.nproc}")
    nproc = args.nproc or search.trial.nproc

    with stdout_kept_for_results():
        if args.resume:
            runner = StudyRunner(args.config, overrides, resume=True, echo=echo)
            study = runner.load_existing()
            walls = [t.user_attrs["wall_seconds"] for t in study.get_trials(deepcopy=False)
                     if t.state.name == "COMPLETE" and t.user_attrs.get("wall_seconds")]
            if not walls:
                raise ConfigError(f"--resume: study '{runner.study_name}' has no finished trial to time; "
                                  "run tune without --resume")
            trial_s, done = float(statistics.median(walls)), runner.budget_used()
        else:
            probe = StudyRunner(args.config, [*overrides, "search.n_trials=1"], workers=1, echo=echo)
            first = probe.run(record=False)
            walls = [t.user_attrs.get("wall_seconds") for t in first.get_trials(deepcopy=False)]
            trial_s, done = float(next((w for w in walls if w), 0.0) or 1.0), 1
        plan = plan_budget(budget, trial_s, elapsed_s=time.time() - started, trials_done=done,
                           cores=os.cpu_count() or 1, gpus=_gpus(), nproc=nproc, workers=args.workers,
                           pruning=True, final=not args.no_final)
        echo(f"tune: one trial took {trial_s:.1f} s; plan: {plan.n_trials} trials on {plan.workers} worker(s) in "
             f"{plan.search_seconds:.0f} s, then {plan.final_seconds:.0f} s of final training")
        timeout = max(plan.search_seconds / 60, 1 / 60)
        runner = StudyRunner(args.config, [*overrides, f"search.n_trials={plan.n_trials}",
                                           f"search.timeout_minutes={timeout:.4f}"],
                             workers=plan.workers, resume=True, echo=echo)
        study = runner.run()
        result = summary(runner, study, plan, strategy)
        if not args.no_final and result.get("best_value") is not None:
            result.update(final_training(runner.study_dir))
    result["elapsed_seconds"] = round(time.time() - started, 1)
    result["budget_seconds"] = budget
    result["over_budget_seconds"] = round(max(0.0, result["elapsed_seconds"] - budget), 1)
    print(json.dumps(result))
    return 0


def summary(runner: Any, study: Any, plan: BudgetPlan, strategy: str) -> dict[str, Any]:
    from tuneforge.search.report import ranked_trials

    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    ranked = ranked_trials(study)
    best = ranked[0] if ranked else None
    return {"status": "completed" if best else "no_finished_trial", "study_dir": str(runner.study_dir),
            "strategy": strategy, "pruner": runner.search.pruner.type, "plan": asdict(plan), "trials": counts,
            "metric": runner.objectives[0].metric, "best_value": best.values[0] if best else None,
            "best_params": best.params if best else None, "best_trial": best.number if best else None,
            "best_config": str(runner.study_dir / "best_config.yaml") if best else None,
            "search_report": str(runner.study_dir / "report.md")}


def final_training(study_dir: Path) -> dict[str, Any]:
    """Train ``best_config.yaml`` with export on; render its report. Returns where they are."""
    from tuneforge.commands import report
    from tuneforge.config import load_config
    from tuneforge.run import train

    best_dir = study_dir / "best"
    config = load_config(study_dir / "best_config.yaml",
                         [f"output.dir={json.dumps(str(best_dir))}", "output.overwrite=true", "output.export=true"])
    results = train(config)
    report.run(argparse.Namespace(run=best_dir, output=None))
    return {"final": {k: results[k] for k in ("status", "steps", "best_metric", "test") if k in results},
            "model_dir": results.get("model_dir"), "report": str(best_dir / "reports" / "report.md")}
