"""The ``portfolio`` strategy: start a study from recipes that covered earlier tasks well.

From the study library (``search.library``, :mod:`tuneforge.search.library`) it builds a small
*portfolio* of recipes, greedily as in Auto-sklearn 2.0 (Feurer et al., 2022): candidates are
the best trials of every library entry; each is scored on every earlier task, normalised per
task to [0, 1] by ``(score - worst) / (best - worst)`` over that task's finished trials (a
candidate that was not run on a task gets the score of that task's nearest trial in the
normalised search space); then recipes are picked one at a time, each maximising the sum over
tasks of the best normalised score in the portfolio so far, until ``size`` recipes are chosen
(once the earlier tasks are covered, the candidates best on all of them come next).

Recipes are moved between tasks in a relative form (:func:`to_relative` / :func:`to_absolute`):

* ``training.lr`` per unit of batch size: ``lr / batch_size`` (``lr_scaling: linear``, Goyal
  et al.'s rule for SGD) or ``lr / sqrt(batch_size)`` (``sqrt``, the default: the rule that holds
  better for Adam), so a recipe found at batch 32 runs at the learning rate it implies at the
  new task's batch size when that is not searched;
* step counts (``training.max_steps``, ``training.warmup_steps``, ``evaluation.every_n_steps``)
  as fractions of the source task's ``training.max_steps``, re-multiplied by the new task's;
* everything else (ratios, epochs, dropout, LoRA rank...) as is, clipped into the new space.

The portfolio runs first, under successive halving (``search.pruner`` if set; otherwise
Optuna's asynchronous successive-halving pruner, ``reduction_factor`` 3); then TPE continues,
its model fitted on the portfolio's results from the first proposal on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tuneforge.errors import ConfigError
from tuneforge.plugins.search_strategies.samplers import optuna_sampler
from tuneforge.search import SearchSpace, SearchStrategy, StrategyOptions

if TYPE_CHECKING:
    from tuneforge.search.library import LibraryEntry
    from tuneforge.search.runner import StudyRunner

STEP_KEYS = ("training.max_steps", "training.warmup_steps", "evaluation.every_n_steps")
LR, BATCH = "training.lr", "training.batch_size"


class PortfolioOptions(StrategyOptions):
    size: int = Field(4, ge=1, description="Recipes in the portfolio (run first).")
    candidates_per_entry: int = Field(3, ge=1, description="Best trials of each library entry considered.")
    min_own_score: float = Field(
        0.5, ge=0.0, le=1.0, description="A candidate's normalised score on its own task must reach this "
        "((value - worst) / (best - worst) over that task's trials): a top-k trial that failed there is no recipe.")
    lr_scaling: Literal["sqrt", "linear", "none"] = Field(
        "sqrt", description="How training.lr moves to another batch size: lr * (new/old)^0.5, ^1, or unchanged.")
    same_task_only: bool = Field(True, description="Use only library entries of the same task plugin "
                                 "(falls back to all entries when none is).")
    n_startup_trials: int | None = Field(
        None, ge=0, description="Random trials before TPE's model is used; default: the portfolio's size.")
    multivariate: bool = Field(True, description="TPE: model parameters jointly.")
    constant_liar: bool = Field(True, description="TPE: avoid proposing what a running trial already evaluates.")


def lr_factor(rule: str, batch: float) -> float:
    """The divisor that makes ``lr`` batch-size free: ``batch`` (linear), ``sqrt(batch)``, 1."""
    return {"linear": float(batch), "sqrt": math.sqrt(batch), "none": 1.0}[rule]


def to_relative(params: dict[str, Any], base: dict[str, Any], rule: str) -> dict[str, Any]:
    """``params`` (over the source task's ``base`` recipe values) in batch- and length-free form."""
    full = {**base, **params}
    rel = dict(params)
    if LR in params and full.get(BATCH):
        rel[LR] = params[LR] / lr_factor(rule, full[BATCH])
    steps = base.get("training.max_steps")
    for key in STEP_KEYS:
        if key in params:
            if steps:
                rel[key] = params[key] / steps
            else:  # a run sized by epochs: its step counts say nothing about another task's
                del rel[key]
    return rel


def to_absolute(rel: dict[str, Any], base: dict[str, Any], rule: str) -> dict[str, Any]:
    """A relative recipe made concrete for the task whose recipe values are ``base``."""
    out = dict(rel)
    batch = rel.get(BATCH, base.get(BATCH))
    if LR in rel and batch:
        out[LR] = rel[LR] * lr_factor(rule, batch)
    steps = base.get("training.max_steps")
    for key in STEP_KEYS:
        if key in rel:
            if steps:
                out[key] = max(1, round(rel[key] * steps))
            else:  # left to the sampler
                del out[key]
    return out


def _unit(space: SearchSpace, key: str, value: Any) -> float | None:
    """``value`` of ``key`` on a [0, 1] scale of the space (log where the parameter is)."""
    p = space[key]
    if p.type == "categorical" or p.low is None or p.high is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if p.log:
        lo, hi, v = math.log(p.low), math.log(p.high), math.log(max(v, 1e-300))
    else:
        lo, hi = float(p.low), float(p.high)
    return 0.0 if hi == lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)


def distance(a: dict[str, Any], b: dict[str, Any], space: SearchSpace) -> float:
    """Mean per-parameter distance of two recipes over the space's keys (categorical: 0 or 1;
    numeric: on the [0, 1] scale; a key only one of them has: 0.5)."""
    total = 0.0
    for key in space.keys:
        if key not in a or key not in b:
            total += 0.0 if key not in a and key not in b else 0.5
            continue
        ua, ub = _unit(space, key, a[key]), _unit(space, key, b[key])
        total += abs(ua - ub) if ua is not None and ub is not None else float(a[key] != b[key])
    return total / max(len(space.keys), 1)


def normalised_scores(values: Sequence[float], direction: str) -> list[float]:
    """``(score - worst) / (best - worst)`` per value; all 1.0 when they are equal."""
    best, worst = (max(values), min(values)) if direction == "maximize" else (min(values), max(values))
    if best == worst:
        return [1.0 for _ in values]
    return [(v - worst) / (best - worst) for v in values]


def performance_matrix(candidates: Sequence[dict[str, Any]], tasks: Sequence[Sequence[tuple[dict[str, Any], float]]],
                       space: SearchSpace) -> list[list[float]]:
    """``M[c][t]``: normalised score of candidate ``c`` on task ``t``, whose (relative recipe,
    normalised score) trials are ``tasks[t]``: the score of the nearest trial (exact when run)."""
    matrix = []
    for cand in candidates:
        row = []
        for trials in tasks:
            nearest = min(trials, key=lambda ts: distance(cand, ts[0], space))
            row.append(nearest[1])
        matrix.append(row)
    return matrix


def greedy_portfolio(matrix: Sequence[Sequence[float]], size: int) -> list[int]:
    """Auto-sklearn 2.0's greedy portfolio (Feurer et al., 2022, Algorithm 1): indices of
    candidates, picked one at a time to maximise the sum over tasks of the best score in the
    portfolio, until ``size`` are picked or none is left. When no candidate adds to the covered
    score (the earlier tasks are covered already), the one with the highest summed score of its
    own is next: another recipe that did well everywhere, a hedge for a task unlike the earlier
    ones. Remaining ties go to the earlier candidate."""
    if not matrix:
        return []
    def merit(i: int, covered: list[float]) -> tuple[float, float, int]:
        gain = sum(max(c, m) for c, m in zip(covered, matrix[i])) - sum(covered)
        return round(gain, 12), sum(matrix[i]), -i

    covered = [0.0] * len(matrix[0])
    chosen: list[int] = []
    while len(chosen) < min(size, len(matrix)):
        best = max((i for i in range(len(matrix)) if i not in chosen), key=lambda i: merit(i, covered))
        chosen.append(best)
        covered = [max(c, m) for c, m in zip(covered, matrix[best])]
    return chosen


def build_portfolio(entries: Sequence[LibraryEntry], space: SearchSpace, target_base: dict[str, Any],
                    options: PortfolioOptions) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(params for the new task, provenance)`` of the portfolio's recipes, in the order chosen."""
    rule = options.lr_scaling
    tasks: list[list[tuple[dict[str, Any], float]]] = []
    candidates: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for entry in entries:
        done = [t for t in entry.trials if t.get("state") == "COMPLETE" and t.get("value") is not None]
        keyed = [({k: v for k, v in t["params"].items() if k in space.keys}, float(t["value"])) for t in done]
        keyed = [(p, v) for p, v in keyed if p]
        if not keyed:
            continue
        scores = normalised_scores([v for _, v in keyed], entry.direction)
        tasks.append([(to_relative(p, entry.base, rule), s) for (p, _), s in zip(keyed, scores)])
        for recipe in entry.recipes(options.candidates_per_entry):
            params = {k: v for k, v in recipe["params"].items() if k in space.keys}
            relative = to_relative(params, entry.base, rule)
            own = normalised_scores([*(v for _, v in keyed), float(recipe["value"])], entry.direction)[-1]
            if own < options.min_own_score:  # a top-k trial that was poor on its own task is no recipe
                continue
            if params and all(relative != c for c, _ in candidates):  # one candidate per recipe
                candidates.append((relative, {"portfolio_from": entry.id, "source_value": recipe["value"]}))
    if not candidates:
        return []
    matrix = performance_matrix([c for c, _ in candidates], tasks, space)
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    seen: set[str] = set()
    for rank, i in enumerate(greedy_portfolio(matrix, options.size)):
        rel, origin = candidates[i]
        params = {k: space[k].clip(v) for k, v in to_absolute(rel, target_base, rule).items()}
        key = repr(sorted(params.items()))
        if key in seen:
            continue
        seen.add(key)
        covered = round(sum(matrix[i]) / max(len(tasks), 1), 3)
        out.append((params, {**origin, "portfolio_rank": rank, "portfolio_mean_score": covered}))
    return out


class PortfolioStrategy(SearchStrategy):
    """A greedy portfolio of recipes from the study library, then TPE seeded by their results."""

    name = "portfolio"
    Options = PortfolioOptions
    options: PortfolioOptions
    multi_objective = False

    def __init__(self, options: Any, space: SearchSpace, objectives: Any, seed: int) -> None:
        super().__init__(options, space, objectives, seed)
        self.portfolio_size = options.size

    def sampler(self) -> Any:
        o = self.options
        startup = o.n_startup_trials if o.n_startup_trials is not None else self.portfolio_size
        return optuna_sampler("TPESampler", seed=self.seed, n_startup_trials=startup, multivariate=o.multivariate,
                              group=o.multivariate, constant_liar=o.constant_liar)

    def recipes(self, runner: StudyRunner) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The portfolio for ``runner``'s task from its library (entries of this study excluded)."""
        from tuneforge.search.library import base_recipe

        if runner.library is None:
            raise ConfigError("search.strategy 'portfolio' needs a study library: set search.library (a directory "
                              "or database URL) or TUNEFORGE_LIBRARY")
        source = f"{runner.storage_url}#{runner.study_name}"
        entries = [e for e in runner.library.entries(direction=self.objectives[0].direction, warn=runner.echo)
                   if e.source != source]
        if self.options.same_task_only:
            same = [e for e in entries if e.meta.get("task") == runner.config.task.name]
            entries = same or entries
        return build_portfolio(entries, self.space, base_recipe(runner.config.model_dump(mode="json")), self.options)

    def run(self, runner: StudyRunner) -> None:
        from tuneforge.config import SearchPruner

        recipes = self.recipes(runner)
        self.portfolio_size = len(recipes)
        if not recipes:
            runner.echo(f"portfolio: library {runner.library.location if runner.library else '-'} has no entry "
                        "with trials over this space; TPE from random start-up trials")
        for params, origin in recipes:
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            runner.echo(f"portfolio recipe {origin['portfolio_rank']} (from {origin['portfolio_from']}, mean "
                        f"normalised score on earlier tasks {origin['portfolio_mean_score']}): {shown}")
        if recipes and runner.search.pruner.type == "none" and runner.objectives[0].split == "validation":
            runner.search.pruner = SearchPruner(type="successive_halving")
            runner.echo("portfolio: trials run under successive halving (search.pruner was none)")
        runner.optimize(first=recipes)
