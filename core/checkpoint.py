"""Atomic, verifiable checkpoints with retention (keep the last N plus the best).

Layout under ``<run_dir>/checkpoints``::

    step-00000200/            a complete checkpoint (renamed into place when done)
        manifest.json         sha256 + size of every file; written last
        trainer_state.json    step, epoch, data position, best metric, counters
        model.safetensors, optimizer.bin, random_states_*.pkl, ...  (Accelerate state)
    .tmp-step-00000300/       a checkpoint being written; never picked up by resume
    best                      the name of the best checkpoint (atomically replaced)

A kill at any moment leaves either the old set of complete checkpoints or the new
one, never a half checkpoint that resume would load. A checkpoint whose files do
not match its manifest is reported and skipped in favour of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.errors import CheckpointError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
PREFIX = "step-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_manifest(directory: Path) -> None:
    files = {
        str(p.relative_to(directory)): {"sha256": _sha256(p), "size": p.stat().st_size}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    write_json_atomic(directory / MANIFEST, {"format": 1, "files": files})


def verify(directory: Path, *, checksums: bool = True) -> None:
    """Raise :class:`CheckpointError` unless every file in the manifest is intact."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint '{directory}' has no {MANIFEST}: it was not completed")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint '{directory}': {MANIFEST} is unreadable ({exc})") from None
    for name, meta in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint '{directory}': file '{name}' is missing")
        if path.stat().st_size != meta["size"]:
            raise CheckpointError(
                f"checkpoint '{directory}': file '{name}' has {path.stat().st_size} bytes, manifest says {meta['size']}"
            )
        if checksums and _sha256(path) != meta["sha256"]:
            raise CheckpointError(f"checkpoint '{directory}': file '{name}' fails its sha256 check (corrupted)")


def read_state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / STATE).read_text(encoding="utf-8"))


class CheckpointManager:
    """Writes, lists, verifies and prunes the checkpoints of one run directory."""

    def __init__(self, run_dir: Path, keep_last: int = 2, *, is_main: bool = True) -> None:
        self.root = run_dir / "checkpoints"
        self.keep_last = keep_last
        self.is_main = is_main

    def complete(self) -> list[Path]:
        """Complete checkpoints (with a manifest), oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / MANIFEST).is_file()]
        return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))

    def best(self) -> Path | None:
        pointer = self.root / "best"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text(encoding="utf-8").strip()
        return path if (path / MANIFEST).is_file() else None

    def latest_valid(self) -> Path | None:
        """The newest checkpoint that passes verification; corrupted ones are skipped with a warning."""
        for path in reversed(self.complete()):
            try:
                verify(path)
                return path
            except CheckpointError as exc:
                log.warning("%s; falling back to the previous checkpoint", exc)
        return None

    def save(
        self,
        step: int,
        state: dict[str, Any],
        write_state: Callable[[Path], None],
        barrier: Callable[[], None],
        *,
        is_best: bool = False,
    ) -> Path:
        """Write a checkpoint atomically. ``write_state(dir)`` runs on every rank."""
        name = f"{PREFIX}{step:08d}"
        final = self.root / name
        tmp = self.root / f".tmp-{name}"
        if self.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        barrier()
        try:
            if not final.exists():
                write_state(tmp)
            barrier()
            if self.is_main:
                if final.exists():  # this step was already saved (e.g. periodic + best)
                    shutil.rmtree(tmp)
                else:
                    write_json_atomic(tmp / STATE, state)
                    write_manifest(tmp)
                    os.replace(tmp, final)
        except OSError as exc:  # disk full, quota, permissions: the half-written copy must not linger
            shutil.rmtree(tmp, ignore_errors=True)
            previous = self.complete()
            kept = f"the last complete checkpoint, {previous[-1]}, is intact" if previous else "no earlier checkpoint"
            raise CheckpointError(
                f"could not write checkpoint {final} ({exc.strerror or exc}); {kept}. Free disk space (or fix the "
                "directory's permissions) and continue with resume=auto"
            ) from exc
        if self.is_main:
            if is_best:
                pointer = self.root / "best"
                tmp_pointer = self.root / ".best.tmp"
                tmp_pointer.write_text(name, encoding="utf-8")
                os.replace(tmp_pointer, pointer)
            self._prune()
        barrier()
        return final

    def _prune(self) -> None:
        best = self.best()
        ckpts = self.complete()
        for path in ckpts[: max(0, len(ckpts) - self.keep_last)]:
            if best is None or path != best:
                shutil.rmtree(path, ignore_errors=True)
        for stale in self.root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def set_aside_after(self, step: int, best_step: int | None = None) -> list[Path]:
        """Rename checkpoints newer than ``step`` to ``.superseded-step-N`` (kept, never loaded).

        A run resumed from ``step`` writes its own checkpoints for the steps after it; a
        newer directory (a corrupted newest checkpoint skipped by ``latest_valid``, or a later
        one when resuming from an explicit older path) would block those writes. The ``best``
        pointer is moved back to ``best_step``'s checkpoint (or dropped) if it named one of them."""
        if not self.root.is_dir():
            return []
        moved: list[Path] = []
        names: set[str] = set()
        for path in sorted(self.root.iterdir()):
            number = path.name[len(PREFIX) :]
            if path.is_dir() and path.name.startswith(PREFIX) and number.isdigit() and int(number) > step:
                target, n = self.root / f".superseded-{path.name}", 1
                while target.exists():
                    target, n = self.root / f".superseded-{path.name}.{n}", n + 1
                os.replace(path, target)
                log.warning("%s is newer than the resume point (step %d): moved aside to %s", path, step, target)
                moved.append(target)
                names.add(path.name)
        pointer = self.root / "best"
        if names and pointer.is_file() and pointer.read_text(encoding="utf-8").strip() in names:
            best = self.root / f"{PREFIX}{best_step:08d}" if best_step is not None else None
            if best is not None and (best / MANIFEST).is_file():
                tmp_pointer = self.root / ".best.tmp"
                tmp_pointer.write_text(best.name, encoding="utf-8")
                os.replace(tmp_pointer, pointer)
            else:
                pointer.unlink()
        return moved

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint to resume from for ``resume`` = never | auto | <path>."""
        if resume == "never":
            return None
        if resume == "auto":
            return self.latest_valid()
        path = Path(resume)
        if path.is_dir() and path.name == "checkpoints":
            path = CheckpointManager(path.parent).latest_valid() or path
        verify(path)
        return path
