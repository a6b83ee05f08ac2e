"""Warm start: a new study's first trials from given parameter sets, earlier studies, and
studies of similar tasks (``search.warm_start``).

A study records what task it tuned (:func:`record_task_metadata`, stored as the
study's ``tuneforge_task`` user attribute). A new study on a similar task can then
seed its first trials with the best parameter sets of the most similar earlier
studies (:func:`warm_start_from_similar`), instead of starting from random ones.

Similarity (:func:`task_similarity`) is 0 for different task plugins; otherwise a
weighted sum of label-set overlap (Jaccard), closeness of the training-set sizes
(ratio of the smaller to the larger), and whether the base model is the same.
:func:`queue_warm_start` enqueues what ``search.warm_start`` asks for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError
from tuneforge.search.storage import default_storage_url, load_study_ref, open_storage

if TYPE_CHECKING:
    from tuneforge.search.runner import StudyRunner

ATTR = "tuneforge_task"


def task_metadata(config: RunConfig, records: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What a study tuned: task plugin, base model, label set and training-set size.

    ``records`` are the training records (read from ``data.train`` when omitted and the
    task has a ``label_field``)."""
    meta: dict[str, Any] = {"task": config.task.name, "model": config.model.name_or_path,
                            "data": config.data.train or config.data.hf_dataset}
    label_field = config.task.options().get("label_field", "label")
    if records is None and config.data.train:
        from tuneforge.data import read_records

        records = read_records(config.data.train, config.data.format)
    if records is not None:
        meta["n_train"] = len(records)
        labels = {str(r[label_field]) for r in records if r.get(label_field) is not None}
        meta["labels"] = sorted(labels)
    return meta


def record_task_metadata(study: Any, metadata: dict[str, Any]) -> None:
    study.set_user_attr(ATTR, metadata)


def task_similarity(a: dict[str, Any], b: dict[str, Any]) -> float:
    """In [0, 1]; 0 when the task plugins differ."""
    if a.get("task") != b.get("task"):
        return 0.0
    la, lb = set(a.get("labels") or []), set(b.get("labels") or [])
    labels = len(la & lb) / len(la | lb) if la | lb else 0.0
    na, nb = a.get("n_train"), b.get("n_train")
    size = min(na, nb) / max(na, nb) if na and nb else 0.0
    size = math.sqrt(size)
    same_model = 1.0 if a.get("model") == b.get("model") else 0.0
    return 0.5 * labels + 0.3 * size + 0.2 * same_model


def similar_studies(storage: Any, metadata: dict[str, Any], *, exclude: str | None = None,
                    min_similarity: float = 0.3) -> list[tuple[str, float]]:
    """Names of studies in ``storage`` that recorded task metadata, most similar first."""
    import optuna

    found = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if summary.study_name == exclude or ATTR not in summary.user_attrs:
            continue
        score = task_similarity(metadata, summary.user_attrs[ATTR])
        if score >= min_similarity:
            found.append((summary.study_name, score))
    return sorted(found, key=lambda x: (-x[1], x[0]))


def best_of_similar(storage: Any, metadata: dict[str, Any], params: Sequence[str], *, exclude: str | None = None,
                    top_k: int = 2, max_studies: int = 3, min_similarity: float = 0.3
                    ) -> list[tuple[dict[str, Any], str, float]]:
    """``(params, study name, similarity)`` of the ``top_k`` best complete trials of each of the
    ``max_studies`` most similar single-objective studies in ``storage``, restricted to the
    parameter names ``params``, most similar study first, without repeats."""
    import optuna
    from optuna.trial import TrialState

    found: list[tuple[dict[str, Any], str, float]] = []
    seen: set[tuple[tuple[str, Any], ...]] = set()
    for name, score in similar_studies(storage, metadata, exclude=exclude, min_similarity=min_similarity)[:max_studies]:
        source = optuna.load_study(study_name=name, storage=storage)
        if len(source.directions) != 1:
            continue
        sign = 1.0 if source.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
        done = [t for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
        for trial in sorted(done, key=lambda t: sign * float(t.value or 0.0))[:top_k]:
            chosen = {k: v for k, v in trial.params.items() if k in params}
            key = tuple(sorted(chosen.items()))
            if not chosen or key in seen:
                continue
            seen.add(key)
            found.append((chosen, name, score))
    return found


def warm_start_from_similar(study: Any, storage: Any, metadata: dict[str, Any], params: Sequence[str], *,
                            top_k: int = 2, max_studies: int = 3, min_similarity: float = 0.3) -> list[dict[str, Any]]:
    """Enqueue in ``study`` the ``top_k`` best complete trials of each of the ``max_studies``
    most similar studies, restricted to the parameter names ``params``; returns what was queued."""
    queued = []
    for chosen, name, score in best_of_similar(storage, metadata, params, exclude=study.study_name, top_k=top_k,
                                               max_studies=max_studies, min_similarity=min_similarity):
        study.enqueue_trial(chosen, user_attrs={"warm_start_from": name, "task_similarity": round(score, 3)})
        queued.append(chosen)
    return queued


def best_params_of(ref: str, top_k: int, keys: list[str]) -> list[dict[str, Any]]:
    """Parameters of the ``top_k`` best finished trials of an earlier study.

    ``ref`` is a study directory (its ``study.db``), or ``<storage URL>#<study name>``.
    """
    study, _ = load_study_ref(ref, "search.warm_start.studies")
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    sign = 1.0 if study.directions[0].name == "MAXIMIZE" else -1.0
    done.sort(key=lambda t: -sign * t.values[0])
    return [{k: v for k, v in t.params.items() if k in keys} for t in done[:top_k]]


def similar_task_trials(runner: StudyRunner, where: str) -> list[tuple[dict[str, Any], str, float]]:
    """Best trials of the studies at ``where`` (a study directory, a directory of study
    directories, or a storage URL) that tuned tasks similar to ``runner``'s."""
    ws = runner.search.warm_start
    if "://" in where:
        urls = [where]
    else:
        root = Path(where).resolve()
        dbs = [root / "study.db"] if (root / "study.db").is_file() else sorted(root.glob("*/study.db"))
        if not root.is_dir():
            raise ConfigError(f"search.warm_start.similar_tasks: '{where}' is not a directory or storage URL")
        urls = [default_storage_url(db.parent) for db in dbs if db.parent != runner.study_dir]
    found: list[tuple[dict[str, Any], str, float]] = []
    for url in urls:
        exclude = runner.study_name if url == runner.storage_url else None
        found += best_of_similar(open_storage(url, heartbeat_seconds=None), runner.task_metadata, runner.space.keys,
                                 exclude=exclude, top_k=ws.top_k, max_studies=ws.max_similar_studies,
                                 min_similarity=ws.min_similarity)
    found.sort(key=lambda x: -x[2])
    return found


def queue_warm_start(runner: StudyRunner) -> int:
    """Enqueue in ``runner.study`` the ``search.warm_start`` parameter sets and earlier studies'
    best trials that it has not run or queued yet; returns how many were queued."""
    ws, space = runner.search.warm_start, runner.space
    candidates: list[dict[str, Any]] = []
    for i, params in enumerate(ws.enqueue):
        unknown = sorted(set(params) - set(space.keys))
        if unknown:
            raise ConfigError(f"search.warm_start.enqueue[{i}]: {unknown} are not in search.params "
                              f"({', '.join(space.keys)})")
        candidates.append(dict(params))
    for ref in ws.studies:
        candidates += best_params_of(ref, ws.top_k, space.keys)
    sources: dict[str, dict[str, Any]] = {}
    for where in ws.similar_tasks:
        for params, name, score in similar_task_trials(runner, where):
            candidates.append(params)
            sources.setdefault(json.dumps(params, sort_keys=True),
                               {"warm_start_from": f"{where}#{name}", "task_similarity": round(score, 3)})
    done = {json.dumps(t.params or t.system_attrs.get("fixed_params", {}), sort_keys=True)  # waiting: fixed_params
            for t in runner.study.get_trials(deepcopy=False)}
    n = 0
    for params in candidates:
        key = json.dumps(params, sort_keys=True)
        params = {k: space[k].clip(v) for k, v in params.items() if k in space.keys}
        if json.dumps(params, sort_keys=True) in done:
            continue
        done.add(json.dumps(params, sort_keys=True))
        attrs = {"warm_start": True, **sources.get(key, {})}
        runner.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
        n += 1
    return n
