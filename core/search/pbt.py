"""Population-based training (Jaderberg et al., 2017) on top of the study runner.

A population of ``population`` members trains in rounds of ``interval_steps``
steps. Each round of a member is one trial (``pbt_member``/``pbt_round`` in its
user attributes) that resumes from the member's checkpoint and stops after the
round's checkpoint. After every round the members are ranked by their latest
validation value; each member in the bottom ``quantile`` *exploits* a member of
the top ``quantile`` (copies its checkpoint) and *explores* (perturbs its
hyperparameters by a factor from ``perturb``, or resamples them). The schedule
(``training.max_steps`` = rounds x interval) is the same for every member, so a
member resumed with a new learning rate keeps its position on it.

Decisions are seeded by (seed, round, member), so a resumed study re-makes the
decisions it lost and reuses every finished round.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field

from tuneforge.checkpoint import CheckpointManager
from tuneforge.errors import ConfigError
from tuneforge.search.space import Param
from tuneforge.search.strategy import StrategyOptions

#: Keys a resumed run can change mid-training (the optimizer follows the new values,
#: the model is rebuilt from config before its weights load).
MUTABLE_KEYS = ("training.lr", "training.weight_decay", "training.eps", "training.max_grad_norm")
MUTABLE_PREFIXES = ("model.config_overrides.",)


class PbtOptions(StrategyOptions):
    population: int = Field(4, ge=2, description="Members trained side by side.")
    interval_steps: int = Field(description="Steps per round (evaluation + exploit/explore after each).")
    rounds: int | None = Field(None, ge=1, description="Rounds; default: training.max_steps // interval_steps.")
    quantile: float = Field(0.25, gt=0, le=0.5, description="Bottom fraction that copies the top fraction.")
    perturb: tuple[float, float] = Field((0.8, 1.2), description="Factors a copied numeric hyperparameter gets.")
    resample_probability: float = Field(0.25, ge=0, le=1, description="Chance to resample instead of perturb.")


def check_pbt_space(params: list[Param]) -> None:
    for p in params:
        if p.key not in MUTABLE_KEYS and not p.key.startswith(MUTABLE_PREFIXES):
            raise ConfigError(
                f"search.params.{p.key}: PBT changes hyperparameters during training, and '{p.key}' cannot change "
                f"mid-run; PBT can search {', '.join(MUTABLE_KEYS)} and model.config_overrides.* (e.g. dropout)"
            )


def explore(params: dict[str, Any], space: Any, rng: random.Random, options: PbtOptions) -> dict[str, Any]:
    """Perturb (or resample) each hyperparameter of a copied member."""
    out = {}
    for key, value in params.items():
        p = space[key]
        if p.type == "categorical":
            out[key] = rng.choice(p.choices) if rng.random() < options.resample_probability else value
        elif rng.random() < options.resample_probability:
            if p.log:
                out[key] = p.clip(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
            else:
                out[key] = p.clip(rng.uniform(p.low, p.high))
        else:
            out[key] = p.clip(value * rng.choice(options.perturb))
    return out


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint directory, hard-linking files where the filesystem allows."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy)


def run_pbt(runner: Any, options: PbtOptions) -> None:
    import optuna

    check_pbt_space(runner.space.params)
    if len(runner.objectives) != 1 or runner.objectives[0].split != "validation":
        raise ConfigError("PBT ranks members by one validation metric; set a single validation.<metric> objective")
    interval = options.interval_steps
    max_steps = runner.config.training.max_steps
    rounds = options.rounds or (max_steps // interval if max_steps else 0)
    if rounds < 1:
        raise ConfigError("PBT needs search.options.rounds, or training.max_steps of at least interval_steps")
    total = rounds * interval
    common = [f"training.max_steps={total}", "evaluation.strategy=steps", f"evaluation.every_n_steps={interval}",
              f"output.save_every_n_steps={interval}", "output.keep_last=1"]
    study = runner.open_study(optuna.samplers.RandomSampler(seed=runner.seed))
    if runner.resume:
        runner.settle_stale()
    objective = runner.objectives[0]
    P = options.population
    n_bad = max(1, math.ceil(options.quantile * P))
    # member -> (params, checkpoint, value, trial number) after the last finished round
    members: dict[int, dict[str, Any]] = {}

    def finished(m: int, r: int) -> Any:
        for t in study.get_trials(deepcopy=False):
            if (t.user_attrs.get("pbt_member") == m and t.user_attrs.get("pbt_round") == r
                    and t.state.name == "COMPLETE" and t.user_attrs.get("checkpoint")
                    and Path(t.user_attrs["checkpoint"]).is_dir()):
                return t
        return None

    for r in range(rounds):
        plans: dict[int, dict[str, Any]] = {}
        ranked = sorted(members, key=lambda m: members[m]["value"], reverse=objective.direction == "maximize")
        bottom, top = set(ranked[-n_bad:]), ranked[:n_bad]
        for m in range(P):
            rng = random.Random(f"{runner.seed}:{r}:{m}")
            if r == 0:
                plans[m] = {"params": None, "source": None, "exploited": False}
            elif m not in members:
                continue  # this member died (its trial failed) and nobody is left to copy
            elif m in bottom and top and top[0] != m:
                src = rng.choice([t for t in top if t != m])
                plans[m] = {"params": explore(members[src]["params"], runner.space, rng, options),
                            "source": src, "exploited": True}
            else:
                plans[m] = {"params": members[m]["params"], "source": m, "exploited": False}
        jobs = []
        for m, plan in plans.items():
            done = finished(m, r)
            if done is not None:
                members[m] = {"params": dict(done.params), "checkpoint": done.user_attrs["checkpoint"],
                              "value": done.values[0], "trial": done.number}
                continue
            if runner.budget_used() >= runner.search.n_trials or runner.out_of_time():
                break
            attrs = {"pbt_member": m, "pbt_round": r, "pbt_exploited": plan["exploited"]}
            if plan["params"] is not None:
                study.enqueue_trial(plan["params"], user_attrs=attrs)
            trial = study.ask()
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            params = runner.space.sample(trial, runner.base_raw)
            source = members[plan["source"]] if plan["source"] is not None else None
            if source is not None:
                trial.set_user_attr("pbt_parent", source["trial"])
            jobs.append((m, trial, params, source))
        if not jobs and not any(finished(m, r) for m in range(P)):
            break

        def run_one(job: tuple[int, Any, dict[str, Any], Any], r: int = r) -> tuple[int, Any, Any]:
            m, trial, params, source = job
            extra = list(common)
            ckpt = None
            if source is not None:
                init = runner.study_dir / "pbt" / f"trial-{trial.number:04d}-init" / Path(source["checkpoint"]).name
                if init.exists():
                    shutil.rmtree(init)
                _copy_checkpoint(Path(source["checkpoint"]), init)
                ckpt = init
                extra.append(f"resume={json.dumps(str(init))}")
            outcome = runner.execute(trial, params, extra_overrides=extra,
                                     stop_at_step=(r + 1) * interval if r < rounds - 1 else None,
                                     apply_hparams=ckpt is not None, last_value=True, keep_checkpoints=True)
            latest = CheckpointManager(runner.trial_dir(trial.number)).complete()
            if latest:
                outcome.attrs["checkpoint"] = str(latest[-1])
            if outcome.state == "paused":
                outcome.state = "complete"
            runner.tell(trial, outcome)
            return m, trial, outcome

        with ThreadPoolExecutor(max_workers=runner.workers) as pool:
            for m, trial, outcome in pool.map(run_one, jobs):
                if outcome.state == "complete" and outcome.values and outcome.attrs.get("checkpoint"):
                    members[m] = {"params": dict(trial.params), "checkpoint": outcome.attrs["checkpoint"],
                                  "value": outcome.values[0], "trial": trial.number}
                else:
                    members.pop(m, None)
        if not members:
            raise ConfigError("every PBT member failed; see the failed trials in report.md")
        runner.echo(f"PBT round {r + 1}/{rounds}: " + ", ".join(
            f"m{m}={members[m]['value']:.4g}" for m in sorted(members)))
