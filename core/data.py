"""Reading records, padding features, and the samplers/loaders the loop uses."""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tuneforge.errors import DataError

FORMATS = ("csv", "tsv", "jsonl", "json")


def infer_format(path: str | Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise DataError(f"{path}: cannot tell the format from the extension '.{suffix}'; set data.format to one of {', '.join(FORMATS)}")


class Record(dict):  # type: ignore[type-arg]
    """A record (a plain dict to every reader) that remembers where it was read: ``origin`` is
    ``"<file>, line N"`` (csv/tsv/jsonl) or ``"<file>, record N"`` (json), and survives the
    sampling, shuffling and splitting done after reading, so errors point at the right line."""

    __slots__ = ("origin",)

    def __init__(self, data: dict[str, Any], origin: str) -> None:
        super().__init__(data)
        self.origin = origin

    def __reduce__(self) -> Any:  # pickles/copies as a Record, origin included
        return (Record, (dict(self), self.origin))


def record_origin(record: Any, source: str, index: int) -> str:
    """Where ``record`` came from, for error messages: its file and line when it was read by
    :func:`read_records`, else ``"<source>, record <index + 1>"``."""
    origin = getattr(record, "origin", None)
    return origin if isinstance(origin, str) else f"{source}, record {index + 1}"


def read_records(path: str | Path, fmt: str = "auto") -> list[dict[str, Any]]:
    """Read csv/tsv (with a header), jsonl, or json (a list, or {"data": [...]}) into dicts."""
    try:
        return _read_records(Path(path), fmt)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed {infer_format(path, fmt)} file: {exc}") from None


def _read_records(path: Path, fmt: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    fmt = infer_format(path, fmt)
    if fmt not in FORMATS:
        raise DataError(f"{path}: format '{fmt}' is not readable here; use one of {', '.join(FORMATS)}")
    if fmt in ("csv", "tsv"):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if fmt == "tsv" else ",", quoting=csv.QUOTE_MINIMAL)
            if not reader.fieldnames:
                raise DataError(f"{path}: empty file or missing header row")
            records: list[dict[str, Any]] = []
            for i, row in enumerate(reader, start=2):
                if None in row or any(v is None for v in row.values()):
                    raise DataError(f"{path}, line {i}: expected {len(reader.fieldnames)} columns ({', '.join(reader.fieldnames)})")
                records.append(Record(row, f"{path}, line {reader.line_num}"))
            return records
    if fmt == "jsonl":
        return read_jsonl(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(f"{path}: a .json data file must hold a list of objects (or {{\"data\": [...]}})")
    return [Record(r, f"{path}, record {i + 1}") for i, r in enumerate(obj)]


def iter_jsonl(path: str | Path, *, skip_invalid: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a jsonl file.

    A line that is not a JSON object is a :class:`DataError` naming the file and line; with
    ``skip_invalid`` it is passed over instead (a log another process may be writing, whose
    last line a kill cut short)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    try:
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    if skip_invalid:
                        continue
                    raise DataError(f"{path}, line {i}: not valid JSON: {exc.msg}") from None
                if not isinstance(obj, dict):
                    if skip_invalid:
                        continue
                    raise DataError(f"{path}, line {i}: each line must be a JSON object, got {type(obj).__name__}")
                yield i, obj
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8") from None


def read_jsonl(path: str | Path, *, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """The objects of a jsonl file (see :func:`iter_jsonl`), each a :class:`Record` whose
    ``origin`` is ``"<file>, line N"``."""
    return [Record(obj, f"{path}, line {i}") for i, obj in iter_jsonl(path, skip_invalid=skip_invalid)]


def load_hub_split(name: str, subset: str | None, split: str) -> list[dict[str, Any]]:
    """Records of one split of a Hugging Face dataset (needs `datasets` and network)."""
    try:
        import datasets
    except ImportError:
        raise DataError("data.hf_dataset needs the `datasets` package: pip install 'tuneforge[hub]'") from None
    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:
        raise DataError(f"dataset '{name}' split '{split}' could not be loaded: {exc}") from exc
    return [Record(dict(r), f"dataset '{name}' split '{split}', row {i}") for i, r in enumerate(ds)]


def require_fields(records: Sequence[dict[str, Any]], fields: Sequence[str], source: str) -> None:
    """Fail on the first record missing a field, naming source, record and field."""
    for i, rec in enumerate(records):
        for f in fields:
            if f not in rec or rec[f] is None:
                have = ", ".join(sorted(rec)) or "none"
                raise DataError(f"{record_origin(rec, source, i)}: missing field '{f}' (fields present: {have})")


class FeatureDataset(Dataset):
    """A list of feature dicts as a torch Dataset."""

    def __init__(self, features: list[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


def pad_features(features: list[dict[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack features into tensors, right-padding list-valued fields to the batch maximum.

    ``input_ids`` pad with ``pad_token_id``, ``labels`` that are lists with -100
    (ignored by the loss), anything else with 0. Scalars are stacked as they are.
    """
    batch: dict[str, torch.Tensor] = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if isinstance(values[0], list | tuple):
            width = max(len(v) for v in values)
            fill = pad_token_id if key == "input_ids" else (-100 if key == "labels" else 0)
            values = [list(v) + [fill] * (width - len(v)) for v in values]
        batch[key] = torch.tensor(values)
    return batch


class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch): the order of any epoch can be
    reproduced after a restart without touching global RNG state."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())


class LengthGroupedSampler(EpochSampler):
    """Random mega-batches of ``50 * batch_size`` examples, each sorted by length, so a
    batch holds examples of similar length (less padding) while epochs stay shuffled."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = list(lengths)
        self.mega = max(1, 50 * batch_size)

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        for start in range(0, len(order), self.mega):
            chunk = sorted(order[start : start + self.mega], key=lambda i: -self.lengths[i])
            yield from chunk


def make_loader(
    features: list[dict[str, Any]],
    batch_size: int,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    *,
    shuffle: bool,
    seed: int = 0,
    lengths: Sequence[int] | None = None,
    num_workers: int = 0,
) -> DataLoader:
    if lengths is not None:
        sampler: EpochSampler = LengthGroupedSampler(lengths, batch_size, seed)
    else:
        sampler = EpochSampler(len(features), seed, shuffle=shuffle)
    return DataLoader(
        FeatureDataset(features),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        drop_last=False,
        # Iterator creation draws a base seed; from its own generator it leaves the global
        # RNG (dropout) untouched, so a resumed run consumes random numbers exactly as before.
        generator=torch.Generator().manual_seed(seed),
    )


def steps_per_epoch(num_batches: int, num_processes: int, accumulation: int) -> int:
    """Optimizer steps per epoch when ``num_batches`` are spread over processes."""
    per_process = math.ceil(num_batches / num_processes)
    return max(1, math.ceil(per_process / accumulation))


# -- few-shot draws and cross-validation folds ------------------------------------------------


def _indices_by_label(labels: Sequence[str], need: int, problem: str) -> dict[str, list[int]]:
    """Indices of each label (sorted by label); a :class:`DataError` (``problem`` first) naming
    the labels with fewer than ``need`` examples."""
    grouped: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        grouped.setdefault(label, []).append(i)
    short = {label: len(ids) for label, ids in sorted(grouped.items()) if len(ids) < need}
    if short:
        listed = ", ".join(f"'{k}' ({v})" for k, v in list(short.items())[:5]) + (" ..." if len(short) > 5 else "")
        raise DataError(f"{problem}; {len(short)} label(s) have fewer than {need} examples: {listed}")
    return dict(sorted(grouped.items()))


def sample_per_label(labels: Sequence[str], shots: int, seed: int, source: str = "train split") -> list[int]:
    """Indices of exactly ``shots`` examples of every label in ``labels`` (one label per record),
    drawn without replacement, in their original order. Each label's draw depends only on
    ``(seed, label, shots)``. A label with fewer than ``shots`` examples is a :class:`DataError`
    naming it: a K-shot set with fewer examples of some label would not be K-shot."""
    grouped = _indices_by_label(labels, shots, f"{source}: data.shots_per_label={shots} (lower it or add examples)")
    chosen: list[int] = []
    for label, ids in grouped.items():
        chosen += random.Random(f"shots:{seed}:{shots}:{label}").sample(ids, shots)
    return sorted(chosen)


def stratified_folds(labels: Sequence[str], folds: int, seed: int, source: str = "train split") -> list[list[int]]:
    """``folds`` disjoint lists of indices that together cover ``labels``, each label's examples
    shuffled (seeded) and dealt round-robin, so every fold holds ``n // folds`` or one more
    examples of a label with ``n``. Every label needs at least ``folds`` examples, so that each
    training part (all folds but one) still holds every label."""
    grouped = _indices_by_label(labels, folds, f"{source}: data.cv_folds={folds} (lower it)")
    parts: list[list[int]] = [[] for _ in range(folds)]
    offset = 0
    for label, ids in grouped.items():
        ids = list(ids)
        random.Random(f"folds:{seed}:{folds}:{label}").shuffle(ids)
        for j, index in enumerate(ids):
            parts[(offset + j) % folds].append(index)
        offset += len(ids)  # the next label's first example goes to the next fold: sizes stay balanced
    return [sorted(p) for p in parts]
