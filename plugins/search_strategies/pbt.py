"""The ``pbt`` strategy: population-based training (Jaderberg et al., 2017) on the study runner.

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
decisions it lost and reuses every finished round. The trial side (a round that stops after
its checkpoint, a resumed member taking new hyperparameters) is in :mod:`tuneforge.search.trial`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from tuneforge.checkpoint import CheckpointManager
from tuneforge.errors import ConfigError
from tuneforge.search import SearchStrategy
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


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint directory, hard-linking files where the filesystem allows."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy)


@dataclass
class Plan:
    """What a member does in a round: train on from ``source``'s checkpoint with ``params``
    (None: sample them, in round 0); ``exploited``: ``source`` is a better member."""

    params: dict[str, Any] | None
    source: int | None
    exploited: bool


#: One trial to run: (member, Optuna trial, its parameters, the source member's last round or None).
Job = tuple[int, Any, dict[str, Any], dict[str, Any] | None]


class Population:
    """One PBT study on a :class:`tuneforge.search.runner.StudyRunner`, round by round."""

    def __init__(self, runner: Any, options: PbtOptions) -> None:
        check_pbt_space(runner.space.params)
        if len(runner.objectives) != 1 or runner.objectives[0].split != "validation":
            raise ConfigError("PBT ranks members by one validation metric; set a single validation.<metric> objective")
        self.runner, self.options = runner, options
        self.interval = options.interval_steps
        max_steps = runner.config.training.max_steps
        self.rounds = options.rounds or (max_steps // self.interval if max_steps else 0)
        if self.rounds < 1:
            raise ConfigError("PBT needs search.options.rounds, or training.max_steps of at least interval_steps")
        i = self.interval
        self.common = [f"training.max_steps={self.rounds * i}", "evaluation.strategy=steps",
                       f"evaluation.every_n_steps={i}", f"output.save_every_n_steps={i}", "output.keep_last=1"]
        self.n_bad = max(1, math.ceil(options.quantile * options.population))
        #: member -> {params, checkpoint, value, trial number} after its last finished round
        self.members: dict[int, dict[str, Any]] = {}
        self.study: Any = None

    def run(self) -> None:
        import optuna

        runner = self.runner
        self.study = runner.open_study(optuna.samplers.RandomSampler(seed=runner.seed))
        if runner.resume:
            runner.settle_stale()
        for r in range(self.rounds):
            jobs = self.ask(r, self.plan(r))
            if not jobs and not any(self.finished(m, r) for m in range(self.options.population)):
                break
            with ThreadPoolExecutor(max_workers=runner.workers) as pool:
                for m, trial, outcome in pool.map(lambda job, r=r: self.train(r, job), jobs):
                    if outcome.state == "complete" and outcome.values and outcome.attrs.get("checkpoint"):
                        self.members[m] = {"params": dict(trial.params), "checkpoint": outcome.attrs["checkpoint"],
                                           "value": outcome.values[0], "trial": trial.number}
                    else:
                        self.members.pop(m, None)
            if not self.members:
                raise ConfigError("every PBT member failed; see the failed trials in report.md")
            runner.echo(f"PBT round {r + 1}/{self.rounds}: " + ", ".join(
                f"m{m}={self.members[m]['value']:.4g}" for m in sorted(self.members)))

    def finished(self, m: int, r: int) -> Any:
        """The complete trial of member ``m`` in round ``r`` whose checkpoint is still there, or None."""
        for t in self.study.get_trials(deepcopy=False):
            if (t.user_attrs.get("pbt_member") == m and t.user_attrs.get("pbt_round") == r
                    and t.state.name == "COMPLETE" and t.user_attrs.get("checkpoint")
                    and Path(t.user_attrs["checkpoint"]).is_dir()):
                return t
        return None

    def plan(self, r: int) -> dict[int, Plan]:
        """Exploit/explore: each living member in the bottom quantile copies one of the top."""
        members = self.members
        ranked = sorted(members, key=lambda m: members[m]["value"],
                        reverse=self.runner.objectives[0].direction == "maximize")
        bottom, top = set(ranked[-self.n_bad:]), ranked[:self.n_bad]
        plans: dict[int, Plan] = {}
        for m in range(self.options.population):
            rng = random.Random(f"{self.runner.seed}:{r}:{m}")
            if r == 0:
                plans[m] = Plan(None, None, False)
            elif m not in members:
                continue  # this member died (its trial failed) and nobody is left to copy
            elif m in bottom and top and top[0] != m:
                src = rng.choice([t for t in top if t != m])
                plans[m] = Plan(explore(members[src]["params"], self.runner.space, rng, self.options), src, True)
            else:
                plans[m] = Plan(members[m]["params"], m, False)
        return plans

    def ask(self, r: int, plans: dict[int, Plan]) -> list[Job]:
        """Trials for the planned members of round ``r`` that no earlier controller finished."""
        runner = self.runner
        jobs: list[Job] = []
        for m, plan in plans.items():
            done = self.finished(m, r)
            if done is not None:
                self.members[m] = {"params": dict(done.params), "checkpoint": done.user_attrs["checkpoint"],
                                   "value": done.values[0], "trial": done.number}
                continue
            if runner.budget_used() >= runner.search.n_trials or runner.out_of_time():
                break
            attrs = {"pbt_member": m, "pbt_round": r, "pbt_exploited": plan.exploited}
            if plan.params is not None:
                self.study.enqueue_trial(plan.params, user_attrs=attrs)
            trial = self.study.ask()
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            params = runner.space.sample(trial, runner.base_raw)
            source = self.members[plan.source] if plan.source is not None else None
            if source is not None:
                trial.set_user_attr("pbt_parent", source["trial"])
            jobs.append((m, trial, params, source))
        return jobs

    def train(self, r: int, job: Job) -> tuple[int, Any, Any]:
        """Run one member's round, from a copy of its source's checkpoint, and tell the study."""
        runner = self.runner
        m, trial, params, source = job
        extra = list(self.common)
        ckpt = None
        if source is not None:
            init = runner.study_dir / "pbt" / f"trial-{trial.number:04d}-init" / Path(source["checkpoint"]).name
            if init.exists():
                shutil.rmtree(init)
            copy_checkpoint(Path(source["checkpoint"]), init)
            ckpt = init
            extra.append(f"resume={json.dumps(str(init))}")
        outcome = runner.execute(trial, params, extra_overrides=extra,
                                 stop_at_step=(r + 1) * self.interval if r < self.rounds - 1 else None,
                                 apply_hparams=ckpt is not None, last_value=True, keep_checkpoints=True)
        latest = CheckpointManager(runner.trial_dir(trial.number)).complete()
        if latest:
            outcome.attrs["checkpoint"] = str(latest[-1])
        if outcome.state == "paused":
            outcome.state = "complete"
        runner.tell(trial, outcome)
        return m, trial, outcome


class PbtStrategy(SearchStrategy):
    """Population-based training: exploit/explore from checkpoints of better members."""

    name = "pbt"
    multi_objective = False
    supports_pruning = False

    Options = PbtOptions
    options: PbtOptions

    def check(self) -> None:
        super().check()
        check_pbt_space(self.space.params)

    def run(self, runner: Any) -> None:
        Population(runner, self.options).run()
