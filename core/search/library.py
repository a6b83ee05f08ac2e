"""The study library: what earlier studies (and, optionally, plain training runs) taught.

Every finished study adds one *entry* to the library named by ``search.library`` (or the
``TUNEFORGE_LIBRARY`` environment variable): the task's meta-features (task plugin, base model
and its parameter count, adapter, label count, training size, mean input length in words, the
metric and its direction), the base config's recipe values (``base``: lr, batch size, steps...),
every finished or pruned trial (parameters + learning curve) and the best recipe. The
``portfolio`` strategy (:mod:`tuneforge.plugins.search_strategies.portfolio`) builds its first
trials from it; ``tuneforge library list|show|add|remove`` manages it.

A library is a directory of JSON files, one per entry, each written atomically (a temporary
file, then ``os.replace``), so writers in several processes never lose or tear an entry; or an
Optuna RDB URL (``sqlite:///lib.db``, PostgreSQL...), where entries are rows of the table
``tuneforge_library``. Reading never fails on a bad entry: one that cannot be parsed, was made by
another tuneforge release series (major.minor) or library format, or optimises its metric in
the other direction than the study asking, is skipped with a warning naming it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneforge import __version__
from tuneforge.errors import ConfigError

log = logging.getLogger("tuneforge.search")

ENV = "TUNEFORGE_LIBRARY"
#: Set to 1 to record every plain ``tuneforge train`` run too (``search.record_train_runs`` in a config).
ENV_TRAIN_RUNS = "TUNEFORGE_LIBRARY_TRAIN_RUNS"
FORMAT = 1
TABLE = "tuneforge_library"
#: Study user attribute holding the meta-features (so ``library add`` can import a stored study).
STUDY_ATTR = "tuneforge_library"
#: Config keys recorded as a run's recipe (the base values of a study; the whole recipe of a train run).
RECIPE_KEYS = (
    "training.lr", "training.batch_size", "training.epochs", "training.max_steps", "training.warmup_ratio",
    "training.weight_decay", "training.scheduler", "adapter.r", "adapter.alpha", "adapter.dropout",
)

Warn = Callable[[str], None]


@dataclass
class LibraryEntry:
    """One finished study (or train run) as the library keeps it."""

    id: str
    kind: str  # study | train
    source: str  # where it came from: a study (storage URL#name) or a run directory
    meta: dict[str, Any]  # meta-features
    metric: str
    direction: str  # maximize | minimize
    base: dict[str, Any]  # the recipe keys' values in the base config (dotted keys)
    trials: list[dict[str, Any]]  # number, state, params, value, steps, wall_seconds, curve [[step, value]]
    best: dict[str, Any] | None  # {params, value, number}
    tuneforge_version: str = __version__
    format: int = FORMAT
    created: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> LibraryEntry:
        """Parse an entry; ``ValueError``/``KeyError``/``TypeError`` if it is not one."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        names = set(cls.__dataclass_fields__)
        missing = sorted(n for n in names if n not in raw and n not in ("created",))
        if missing:
            raise KeyError(f"missing {', '.join(missing)}")
        return cls(**{k: v for k, v in raw.items() if k in names})

    def recipes(self, top_k: int) -> list[dict[str, Any]]:
        """The ``top_k`` best complete trials, best first: ``{params, value, number}``."""
        sign = -1.0 if self.direction == "maximize" else 1.0
        done = [t for t in self.trials if t.get("state") == "COMPLETE" and t.get("value") is not None]
        done.sort(key=lambda t: (sign * float(t["value"]), t.get("number", 0)))
        return [{"params": t["params"], "value": t["value"], "number": t.get("number")} for t in done[:top_k]]

    def summary(self) -> dict[str, Any]:
        m = self.meta
        best = self.best or {}
        return {"id": self.id, "kind": self.kind, "task": m.get("task"), "model": m.get("model"),
                "n_train": m.get("n_train"), "n_labels": m.get("n_labels"), "metric": self.metric,
                "direction": self.direction, "trials": len(self.trials), "best": best.get("value"),
                "tuneforge": self.tuneforge_version}


def _series(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _source_of(text: str) -> Any:
    """The ``source`` of an entry's JSON text (``None`` when it cannot be read)."""
    try:
        return json.loads(text).get("source")
    except (ValueError, AttributeError):
        return None


def new_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:60] or "entry"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


class Library:
    """Entries in a directory or a database; subclasses store the JSON text of each entry."""

    location: str

    def add(self, entry: LibraryEntry) -> str:
        """Store ``entry`` (atomically); returns its id. An earlier entry of the same source (a
        study resumed that finishes again, a run retrained into its directory, a study added
        twice) is removed once the new one is stored, so every source counts once: its latest."""
        self._store(entry)
        for name, text, _ in list(self.raw()):
            if name != entry.id and text is not None and _source_of(text) == entry.source:
                with contextlib.suppress(ConfigError):  # another writer removed it first
                    self.remove(name)
        return entry.id

    def _store(self, entry: LibraryEntry) -> None:
        raise NotImplementedError

    def remove(self, entry_id: str) -> None:
        raise NotImplementedError

    def raw(self) -> Iterator[tuple[str, str | None, str]]:
        """``(entry id, JSON text or None if unreadable, why unreadable)`` of every stored entry."""
        raise NotImplementedError

    def count(self) -> int:
        return sum(1 for _ in self.raw())

    def get(self, entry_id: str) -> LibraryEntry:
        for name, text, why in self.raw():
            if name == entry_id:
                if text is None:
                    raise ConfigError(f"library entry '{entry_id}' in {self.location} cannot be read: {why}")
                return self._parse(name, text)
        raise ConfigError(f"library {self.location} has no entry '{entry_id}'; `tuneforge library list` shows them")

    def _parse(self, name: str, text: str) -> LibraryEntry:
        try:
            return LibraryEntry.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"library entry '{name}' in {self.location} cannot be read: {exc}") from None

    def entries(self, *, direction: str | None = None, warn: Warn | None = None) -> list[LibraryEntry]:
        """Every usable entry, oldest first; skipped ones (unreadable, another tuneforge release
        series or format, another ``direction``) each get one warning naming them."""
        warn = warn or log.warning
        out = []
        for name, text, why in self.raw():
            where = f"library entry '{name}' in {self.location}"
            if text is None:
                warn(f"{where} cannot be read ({why}); skipped")
                continue
            try:
                entry = LibraryEntry.from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                warn(f"{where} cannot be read ({type(exc).__name__}: {exc}); skipped")
                continue
            if entry.format != FORMAT or _series(str(entry.tuneforge_version)) != _series(__version__):
                warn(f"{where} was made by tuneforge {entry.tuneforge_version} (library format {entry.format}); "
                     f"this is tuneforge {__version__} (format {FORMAT}); skipped")
                continue
            if direction is not None and entry.direction != direction:
                warn(f"{where} {entry.direction}s {entry.metric}; this study {direction}s its metric; skipped")
                continue
            out.append(entry)
        return sorted(out, key=lambda e: (e.created, e.id))


class DirectoryLibrary(Library):
    """One ``<id>.json`` file per entry in a directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.location = str(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"library '{path}' is a file; give a directory or a database URL (sqlite:///lib.db)")

    def _store(self, entry: LibraryEntry) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"{entry.id}.json"
        tmp = self.path / f".{entry.id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(entry.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)

    def remove(self, entry_id: str) -> None:
        path = self.path / f"{entry_id}.json"
        if not path.is_file():
            raise ConfigError(f"library {self.location} has no entry '{entry_id}'; `tuneforge library list` shows them")
        path.unlink()

    def raw(self) -> Iterator[tuple[str, str | None, str]]:
        if not self.path.is_dir():
            return
        for path in sorted(self.path.glob("*.json")):
            try:
                yield path.stem, path.read_text(encoding="utf-8"), ""
            except (OSError, UnicodeDecodeError) as exc:
                yield path.stem, None, str(exc)


class DatabaseLibrary(Library):
    """Rows ``(id, created, body)`` of the table ``tuneforge_library`` in an SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        from tuneforge.search.storage import _redact

        self.location = _redact(url)
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
        try:
            self.engine = sa.create_engine(url, **kwargs)
        except Exception as exc:  # a bad URL or a missing driver
            raise ConfigError(f"library '{self.location}': cannot open it: {exc}") from None
        self.table = sa.Table(TABLE, sa.MetaData(), sa.Column("id", sa.String(200), primary_key=True),
                              sa.Column("created", sa.Float), sa.Column("body", sa.Text))
        try:
            self.table.metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.OperationalError:
            # another process created it between the check and the CREATE: use theirs
            self.table.metadata.create_all(self.engine, checkfirst=True)

    def _store(self, entry: LibraryEntry) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.insert().values(id=entry.id, created=entry.created, body=entry.to_json()))

    def remove(self, entry_id: str) -> None:
        with self.engine.begin() as conn:
            deleted = conn.execute(self.table.delete().where(self.table.c.id == entry_id)).rowcount
        if not deleted:
            raise ConfigError(f"library {self.location} has no entry '{entry_id}'; `tuneforge library list` shows them")

    def raw(self) -> Iterator[tuple[str, str | None, str]]:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(self.table.c.id, self.table.c.body).order_by(self.table.c.id)).all()
        for entry_id, body in rows:
            yield entry_id, body, "" if body is not None else "empty row"


def open_library(location: str | Path) -> Library:
    """The library at ``location``: a database URL (``scheme://...``) or a directory."""
    text = str(location)
    return DatabaseLibrary(text) if "://" in text else DirectoryLibrary(text)


def library_location(configured: str | None = None) -> str | None:
    """``search.library`` if set, else ``$TUNEFORGE_LIBRARY``, else None."""
    return configured or os.environ.get(ENV) or None


def records_train_runs(configured: bool = False) -> bool:
    """Whether plain ``tuneforge train`` runs are recorded (``search.record_train_runs`` or the env var)."""
    return configured or os.environ.get(ENV_TRAIN_RUNS, "").lower() in ("1", "true", "yes")


# -- meta-features ------------------------------------------------------------------------


def mean_input_words(records: Sequence[dict[str, Any]], text_field: str | None, skip: Sequence[str] = ()) -> float:
    """Mean words per record of ``text_field`` (else of every string field but ``skip``)."""

    def words(value: Any) -> int:
        if isinstance(value, str):
            return len(value.split())
        if isinstance(value, list):
            return sum(words(v) for v in value)
        return 0

    if not records:
        return 0.0
    total = 0
    for r in records:
        if text_field and text_field in r:
            total += words(r[text_field])
        else:
            total += sum(words(v) for k, v in r.items() if k not in skip)
    return round(total / len(records), 2)


def base_recipe(raw: dict[str, Any]) -> dict[str, Any]:
    """The :data:`RECIPE_KEYS` a (resolved, JSON-dumped) config sets."""
    from tuneforge.dotted import get_dotted

    out = {}
    for key in RECIPE_KEYS:
        try:
            value = get_dotted(raw, key)
        except (KeyError, TypeError):
            continue
        if value is not None:
            out[key] = value
    return out


def meta_features(config: Any, records: Sequence[dict[str, Any]] | None) -> dict[str, Any]:
    """A task's meta-features from its config and training records (no model is loaded: the
    parameter count is filled in from a finished run's ``params.json``)."""
    from tuneforge.search.warmstart import task_metadata

    meta = task_metadata(config, records)
    options = config.task.options()
    label_field = options.get("label_field", "label")
    meta["n_labels"] = len(meta["labels"]) if meta.get("labels") else None
    meta["adapter"] = config.adapter.type if config.adapter is not None else None
    meta["mean_input_words"] = mean_input_words(records or [], options.get("text_field"), skip=(label_field,))
    meta["model_params"] = None
    return meta


def model_params(run_dir: Path | str | None) -> int | None:
    """Total parameters of the model a run trained, from its ``params.json`` (jsonl tracker)."""
    if not run_dir:
        return None
    try:
        return int(json.loads((Path(run_dir) / "params.json").read_text(encoding="utf-8"))["parameters"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- entries from studies and runs ------------------------------------------------------------


def entry_from_study(study: Any, source: str, meta: dict[str, Any] | None = None,
                     base: dict[str, Any] | None = None) -> LibraryEntry:
    """The entry of a stored study; ``meta``/``base`` default to what the study recorded."""
    recorded = study.user_attrs.get(STUDY_ATTR) or {}
    meta = dict(meta if meta is not None else recorded.get("meta") or study.user_attrs.get("tuneforge_task") or {})
    base = dict(base if base is not None else recorded.get("base") or {})
    objectives = (study.user_attrs.get("tuneforge") or {}).get("objectives")
    metric, direction = (objectives[0] if objectives else ("value", study.directions[0].name.lower()))
    trials, best = [], None
    sign = 1.0 if direction == "maximize" else -1.0
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        value = float(t.values[0]) if t.state.name == "COMPLETE" and t.values else None
        trials.append({"number": t.number, "state": t.state.name, "params": dict(t.params), "value": value,
                       "steps": t.user_attrs.get("steps"), "wall_seconds": t.user_attrs.get("wall_seconds"),
                       "curve": [[int(s), float(v)] for s, v in sorted(t.intermediate_values.items())]})
        if value is not None and (best is None or sign * value > sign * best["value"]):
            best = {"params": dict(t.params), "value": value, "number": t.number,
                    "run_dir": t.user_attrs.get("run_dir")}
    if best is not None and not meta.get("model_params"):
        meta["model_params"] = model_params(best.pop("run_dir"))
    elif best is not None:
        best.pop("run_dir")
    return LibraryEntry(id=new_id(study.study_name), kind="study", source=source, meta=meta, metric=metric,
                        direction=direction, base=base, trials=trials, best=best)


def entry_from_run(config: Any, run_dir: Path, results: dict[str, Any]) -> LibraryEntry:
    """The entry of a plain training run: its recipe is one trial, its validation curve the curve."""
    from tuneforge.commands.runs import read_metrics
    from tuneforge.plugin_manager import PluginManager

    registries = PluginManager.default(config.plugins).build_registries()
    task = registries.tasks.get(config.task.name)
    records = None
    if config.data.train:
        from tuneforge.data import read_records

        records = read_records(config.data.train, config.data.format)
    meta = meta_features(config, records)
    meta["model_params"] = model_params(run_dir)
    metric_name = results.get("metric") or task.primary_metric
    greater = task.greater_is_better if config.evaluation.greater_is_better is None else (
        config.evaluation.greater_is_better)
    curve = [[int(x["step"]), float(x[metric_name])] for x in read_metrics(run_dir)
             if x.get("split") == "validation" and isinstance(x.get(metric_name), (int, float))]
    recipe = base_recipe(config.model_dump(mode="json"))
    value = results.get("best_metric")
    trial = {"number": 0, "state": "COMPLETE" if value is not None else "PRUNED", "params": recipe,
             "value": value, "steps": results.get("steps"), "wall_seconds": results.get("wall_seconds"),
             "curve": curve}
    best = {"params": recipe, "value": value, "number": 0} if value is not None else None
    return LibraryEntry(id=new_id(Path(run_dir).name), kind="train", source=str(Path(run_dir).resolve()),
                        meta=meta, metric=f"validation.{metric_name}",
                        direction="maximize" if greater else "minimize", base=recipe, trials=[trial], best=best)


def import_study(ref: str) -> LibraryEntry:
    """The entry of the study at ``ref``: a study directory (its ``study.db``) or ``URL#name``."""
    from tuneforge.search.storage import load_study_ref

    study, url = load_study_ref(ref, "tuneforge library add")
    name = study.study_name
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        raise ConfigError(f"study '{name}' in {ref} has no finished trial; nothing to learn from it yet")
    return entry_from_study(study, f"{url}#{name}")
