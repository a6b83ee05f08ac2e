"""The search space: typed parameters addressed by dotted config keys.

A :class:`SearchSpace` is built from the config's ``search.params`` and checked
against the run config *before* any trial starts: every key must exist in the
config schema (did-you-mean otherwise), and every value the space can produce at
its ends (``low``, ``high``, each choice) must pass the same validation a normal
run gets. Sampling is define-by-run through an Optuna trial, so conditional
parameters (``when: {adapter.type: lora}``) only exist in trials where they apply.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tuneforge.config import RunConfig, config_key_problem
from tuneforge.dotted import get_dotted, set_dotted
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.search.config import SearchConfig, SearchParam

#: Keys the search itself sets for every trial; searching them makes no sense.
RESERVED_KEYS = ("output.dir", "output.overwrite", "resume")
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Param:
    """One dimension of the space (a validated ``search.params`` entry)."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, key: str, p: SearchParam) -> Param:
        return cls(key, p.type, p.low, p.high, p.log, p.step, tuple(p.choices or ()), dict(p.when))

    def ends(self) -> list[Any]:
        """The extreme values this parameter can take (checked against the config schema)."""
        if self.type == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def grid(self) -> list[Any]:
        """All values for grid search; needs choices or a step."""
        if self.type == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.step is None:
            if self.type == "int" and not self.log:
                return list(range(int(self.low), int(self.high) + 1))
            raise ConfigError(
                f"search.params.{self.key}: grid search needs a finite set of values; give it 'step' "
                f"(e.g. step: {(self.high - self.low) / 4:g}) or make it categorical with 'choices'"
            )
        n = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        values = [self.low + i * self.step for i in range(n)]
        return [round(v) for v in values] if self.type == "int" else [round(v, 12) for v in values]

    def clip(self, value: Any) -> Any:
        """``value`` moved into this parameter's range (and onto its step)."""
        if self.type == "categorical":
            return value
        assert self.low is not None and self.high is not None
        v = min(max(float(value), self.low), self.high)
        if self.step is not None:
            v = self.low + round((v - self.low) / self.step) * self.step
            v = min(v, self.high)
        return round(v) if self.type == "int" else v

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low or 0), int(self.high or 0),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low or 0.0), float(self.high or 0.0),
                                   step=self.step, log=self.log)


def _matches(actual: Any, wanted: Any) -> bool:
    return actual in wanted if isinstance(wanted, list) else actual == wanted


class SearchSpace:
    """An ordered set of :class:`Param` with conditions, sampled through an Optuna trial."""

    def __init__(self, params: list[Param]) -> None:
        self.params = params
        self._by_key = {p.key: p for p in params}

    @classmethod
    def from_config(cls, search: SearchConfig) -> SearchSpace:
        params = [Param.from_config(k, p) for k, p in search.params.items()]
        seen: set[str] = set()
        for p in params:
            where = f"search.params.{p.key}"
            if p.key in RESERVED_KEYS:
                raise ConfigError(f"{where}: '{p.key}' is set by the search for every trial and cannot be searched")
            for c in p.choices:
                if not isinstance(c, _SCALARS):
                    raise ConfigError(
                        f"{where}: choice {c!r} is not a scalar; categorical choices must be strings, numbers, "
                        "booleans or null"
                    )
            for cond_key in p.when:
                problem = config_key_problem(cond_key)
                if problem:
                    raise ConfigError(f"{where}.when: {problem}")
                if cond_key in {q.key for q in params} and cond_key not in seen:
                    raise ConfigError(
                        f"{where}.when refers to '{cond_key}', which is searched after it; list '{cond_key}' "
                        f"before '{p.key}' in search.params"
                    )
            seen.add(p.key)
        return cls(params)

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def __getitem__(self, key: str) -> Param:
        return self._by_key[key]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def active(self, param: Param, values: dict[str, Any], base: dict[str, Any]) -> bool:
        """Whether ``param``'s conditions hold for the values sampled so far (or the base config)."""
        for key, wanted in param.when.items():
            actual = values[key] if key in values else get_dotted(base, key)
            if not _matches(actual, wanted):
                return False
        return True

    def sample(self, trial: Any, base: dict[str, Any]) -> dict[str, Any]:
        """Sample every active parameter through ``trial`` (``suggest_*``, define-by-run)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if self.active(p, values, base):
                values[p.key] = p.suggest(trial)
        return values

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of every parameter (for samplers that need the space up front)."""
        import optuna.distributions as d

        out: dict[str, Any] = {}
        for p in self.params:
            if p.type == "categorical":
                out[p.key] = d.CategoricalDistribution(list(p.choices))
            elif p.type == "int":
                out[p.key] = d.IntDistribution(int(p.low or 0), int(p.high or 0), log=p.log, step=int(p.step or 1))
            else:
                out[p.key] = d.FloatDistribution(float(p.low or 0), float(p.high or 0), log=p.log, step=p.step)
        return out

    def check(self, base: dict[str, Any], validate_config: Callable[[dict[str, Any]], RunConfig]) -> None:
        """Every end value of every parameter must give a valid run config.

        ``validate_config(raw)`` validates a raw config dict (schema + plugin options)
        and raises :class:`ConfigError`. The first problem is reported with its key and value.
        """
        for p in self.params:
            for value in p.ends():
                raw = apply_params(base, {p.key: value})
                try:
                    validate_config(raw)
                except TuneforgeError as exc:
                    detail = str(exc).replace("\n", "; ")
                    raise ConfigError(
                        f"search.params.{p.key}: the value {value!r} this parameter can take gives an invalid "
                        f"run config: {detail}"
                    ) from None


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw config ``base`` with the dotted ``params`` set."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(raw, key, value)
    return raw


def to_overrides(params: dict[str, Any]) -> list[str]:
    """``{"training.lr": 3e-5}`` -> ``["training.lr=3e-05"]`` (values as JSON, which parses as YAML)."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]
