"""GGUF models: a ``.gguf`` file used wherever a model name is, de-quantised once into a cache.

A model is a GGUF model when ``model.gguf_file`` names a file inside ``model.name_or_path``, or
when the name itself ends in ``.gguf`` (a path, or ``pkg:<package>/<file>.gguf``). transformers
de-quantises such a file on every ``from_pretrained(..., gguf_file=...)`` (about 20 s for a 135M
model); tuneforge does it once and keeps the result as a plain model directory (safetensors,
tokenizer files, a manifest of checksums) under ``$TUNEFORGE_CACHE/gguf/<sha256[:16]>/``
(default ``~/.cache/tuneforge``), keyed by the file's hash. Later runs, search trials, ranks,
``evaluate`` and ``predict`` load that directory.

:func:`check` is the cheap part (existence, magic bytes, the ``gguf`` package, an architecture
transformers converts) that preflight runs; :func:`pretrained_dir` builds or reuses the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import mmap
import os
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.hub import resolve_pretrained

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
MANIFEST = "tuneforge-gguf.json"
#: GGUF spellings of architectures transformers knows under another name.
ARCHITECTURE_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
#: Architectures that load as encoder-decoder models; every other one is a causal LM.
SEQ2SEQ_ARCHITECTURES = frozenset({"t5"})


@dataclass(frozen=True)
class GGUFHeader:
    """What tuneforge reads from a GGUF file's header (no tensor data)."""

    path: Path
    architecture: str
    #: The file's quantisation, e.g. ``Q4_1`` (``general.file_type``, else its commonest tensor type).
    file_type: str
    #: ``{ggml type name: number of tensors}``, e.g. ``{"Q4_1": 210, "F32": 61, "Q8_0": 1}``.
    tensor_types: dict[str, int]
    #: Metadata scalars and strings by key (an array: its length, e.g. ``tokenizer.ggml.tokens``).
    metadata: dict[str, Any] = field(default_factory=dict)
    tensor_names: tuple[str, ...] = ()

    def describe(self) -> str:
        counts = ", ".join(f"{n} {name}" for name, n in sorted(self.tensor_types.items(), key=lambda kv: -kv[1]))
        return f"{self.file_type} ({self.architecture}; tensors: {counts})"


# -- naming a GGUF model -------------------------------------------------------------------


def gguf_source(name: str, gguf_file: str | None = None, key: str = "model.name_or_path") -> Path | None:
    """The GGUF file a model name (plus ``model.gguf_file``) refers to, or None for a plain model."""
    local = resolve_pretrained(name)
    if gguf_file:
        if not Path(local).is_dir():
            raise ConfigError(
                f"model.gguf_file: '{gguf_file}' is looked up inside {key}, and '{name}' is not a local directory; "
                "set it to the directory (or pkg:<package>) holding the file, or give the .gguf path as "
                f"{key} and drop model.gguf_file"
            )
        return Path(local) / gguf_file
    return Path(local) if local.lower().endswith(".gguf") else None


def check_model(name: str, gguf_file: str | None = None, key: str = "model.name_or_path") -> bool:
    """Preflight: True when ``name`` is a GGUF model that :func:`check` accepts (raises
    ``ConfigError`` when it does not), False when it is not a GGUF model at all."""
    source = gguf_source(name, gguf_file, key)
    if source is None:
        return False
    check(source, key)
    return True


def check(path: str | Path, key: str = "model.name_or_path") -> GGUFHeader:
    """Cheap checks before any heavy work: the file exists, is a GGUF file (magic bytes), the
    ``gguf`` package is installed, and transformers converts its architecture. Raises ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"{key}: GGUF file '{path}' {what}; give the path of a .gguf file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != MAGIC:
        raise ConfigError(
            f"{key}: '{path}' is not a GGUF file (it starts with {magic!r}, not {MAGIC!r}); give a .gguf file "
            "written by llama.cpp or the gguf package, or a Hugging Face model directory"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(
            f"{key}: loading the GGUF file '{path.name}' needs the gguf package: pip install gguf "
            "(or pip install 'tuneforge[llm]')"
        )
    header = read_header(path, key)
    supported = supported_architectures()
    if ARCHITECTURE_ALIASES.get(header.architecture, header.architecture) not in supported:
        import transformers

        raise ConfigError(
            f"{key}: GGUF file '{path.name}' holds a '{header.architecture}' model, which transformers "
            f"{transformers.__version__} cannot load from GGUF; supported architectures: {', '.join(supported)}"
        )
    return header


def supported_architectures() -> list[str]:
    """GGUF ``general.architecture`` values the installed transformers converts."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # mapping sections, not models
    try:  # transformers 5.x: a second, native GGUF path for newer architectures
        from transformers.integrations.gguf import GGUF_ARCHS
    except ImportError:
        return sorted(names)
    return sorted(names | set(GGUF_ARCHS))


# -- the header --------------------------------------------------------------------------------

# GGUF metadata value types (gguf.GGUFValueType) of a fixed width, as struct formats.
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_header(path: Path, key: str = "model.name_or_path") -> GGUFHeader:
    """Architecture and tensor types from the header alone. ``gguf.GGUFReader`` parses every
    vocabulary entry into arrays (3 s for SmolLM2); this walks past them in about 0.1 s."""
    import gguf

    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
            if version not in (2, 3):
                raise ConfigError(f"{key}: '{path.name}' is GGUF version {version}; tuneforge reads versions 2 and 3")
            pos, metadata = 24, {}
            for _ in range(n_kv):
                name, pos = _read_string(buf, pos)
                (value_type,) = struct.unpack_from("<I", buf, pos)
                metadata[name], pos = _read_value(buf, pos + 4, value_type)
            types: Counter[str] = Counter()
            names = []
            for _ in range(n_tensors):
                tensor_name, pos = _read_string(buf, pos)
                names.append(tensor_name)
                (n_dims,) = struct.unpack_from("<I", buf, pos)
                (ggml_type,) = struct.unpack_from("<I", buf, pos + 4 + 8 * n_dims)
                pos += 4 + 8 * n_dims + 12
                types[gguf.GGMLQuantizationType(ggml_type).name] += 1
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{key}: the header of GGUF file '{path}' is truncated or corrupt ({exc})") from None
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise ConfigError(f"{key}: GGUF file '{path}' has no general.architecture in its metadata")
    return GGUFHeader(path, architecture, _file_type(metadata.get("general.file_type"), types), dict(types),
                      metadata, tuple(names))


def _file_type(value: Any, types: Counter[str]) -> str:
    """``general.file_type`` by name (``Q4_1``), else the commonest quantised tensor type."""
    import gguf

    known = {t.value: t.name.removeprefix("MOSTLY_").removeprefix("ALL_") for t in gguf.LlamaFileType}
    if isinstance(value, int) and value & ~1024 in known:  # 1024: llama.cpp's "guessed" flag
        return known[value & ~1024]
    quantised = Counter({t: n for t, n in types.items() if t not in ("F32", "F16", "BF16")}) or types
    return quantised.most_common(1)[0][0] if quantised else "F32"


def _read_string(buf: Any, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", buf, pos)
    return bytes(buf[pos + 8 : pos + 8 + length]).decode("utf-8"), pos + 8 + length


def _read_value(buf: Any, pos: int, value_type: int) -> tuple[Any, int]:
    """One metadata value and the offset after it; arrays are skipped (their length is returned)."""
    if value_type in _SCALAR_FORMATS:
        fmt = "<" + _SCALAR_FORMATS[value_type]
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if value_type == _STRING:
        return _read_string(buf, pos)
    if value_type == _ARRAY:
        element_type, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if element_type in _SCALAR_FORMATS:
            return count, pos + count * struct.calcsize("<" + _SCALAR_FORMATS[element_type])
        for _ in range(count):
            _, pos = _read_value(buf, pos, element_type)
        return count, pos
    raise ValueError(f"unknown metadata value type {value_type}")


# -- the cache ---------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$TUNEFORGE_CACHE``, default ``~/.cache/tuneforge``."""
    return Path(os.environ.get("TUNEFORGE_CACHE") or Path.home() / ".cache" / "tuneforge").expanduser()


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class DigestIndex:
    """sha256 of files remembered by path, size and mtime (``gguf/index.json``), so an unchanged
    file is hashed once, not on every run; a changed file (other size or mtime) is hashed again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = {}
        self.entries: dict[str, dict[str, Any]] = entries if isinstance(entries, dict) else {}

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        entry = self.entries.get(str(file.resolve()))
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            return str(entry["sha256"])
        digest = file_sha256(file)
        self.record({file: digest})
        return digest

    def record(self, digests: dict[Path, str]) -> None:
        """Remember known digests (of files just written) under their current size and mtime."""
        for file, digest in digests.items():
            stat = file.stat()
            self.entries[str(file.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self._save()

    def _save(self) -> None:
        """Atomic replace: a concurrent writer may drop an entry (hashed again later), never corrupt it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".index-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.entries, f)
        os.replace(tmp, self.path)


def pretrained_dir(
    source: str | Path, key: str = "model.name_or_path", load_dtype: str = "float32", announce: bool = True
) -> Path:
    """The de-quantised model directory of a GGUF file: reused when its manifest checks out,
    else (first use, or a corrupt cache: warned) built under a file lock so that concurrent
    processes build it once, into a temporary directory renamed into place when complete."""
    header = check(source, key)
    root = cache_root() / "gguf"
    index = DigestIndex(root / "index.json")
    sha = index.sha256(header.path)
    target = root / sha[:16]
    if cache_problem(target, sha, index) is not None:
        with _build_lock(root / f"{sha[:16]}.lock", header.path):
            if (problem := cache_problem(target, sha, index)) is not None:  # built while we waited?
                if target.exists():
                    log.warning("GGUF cache %s is unusable (%s); rebuilding it", target, problem)
                    _discard(target)
                _build(header, sha, target, index)
    loaded_as = "" if load_dtype in ("float32", "auto") else f", loaded as {load_dtype}"
    log.log(logging.INFO if announce else logging.DEBUG, "%s: weights de-quantised from %s to float32%s, from the "
            "cache %s", header.path.name, header.describe(), loaded_as, target)
    return target


def cache_problem(directory: Path, sha256: str, index: DigestIndex) -> str | None:
    """Why ``directory`` is not a complete de-quantisation of the GGUF file with this hash, or None.
    Every file of the manifest must exist with its size; its checksum is recomputed when its size
    or mtime differ from when it was last hashed (``DigestIndex``)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest["source"]["sha256"] != sha256:
            return f"{MANIFEST} is for another GGUF file"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is missing or unreadable ({type(exc).__name__})"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} is {path.stat().st_size} bytes, the manifest says {expected['size']} (truncated?)"
        if index.sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


@contextmanager
def _build_lock(lock_path: Path, source: Path) -> Iterator[None]:
    import fcntl  # POSIX; imported here so that naming a model never needs it

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is de-quantising %s; waiting for it", source.name)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _discard(directory: Path) -> None:
    """Move aside first (one rename), so the target name is free at once, then delete."""
    trash = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".trash-{directory.name}-"))
    os.replace(directory, trash / directory.name)
    shutil.rmtree(trash, ignore_errors=True)


def _build(header: GGUFHeader, sha256: str, target: Path, index: DigestIndex) -> None:
    log.info("de-quantising %s from %s to float32, once, into %s", header.path.name, header.describe(), target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".build-{target.name}-"))
    try:
        dequantise(header, tmp)
        digests = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "source": {"name": header.path.name, "sha256": sha256, "architecture": header.architecture,
                       "file_type": header.file_type, "tensor_types": header.tensor_types},
            "dtype": "float32",
            "transformers": _transformers_version(),
            "files": {name: {"size": (tmp / name).stat().st_size, "sha256": d} for name, d in digests.items()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    index.record({target / name: d for name, d in digests.items()})  # a rename keeps size and mtime


def dequantise(header: GGUFHeader, directory: Path) -> None:
    """Load the GGUF file with transformers (de-quantising every tensor to float32) and save it
    as a plain model directory with its tokenizer."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": header.path.name, "dtype": torch.float32}
    gguf_config = getattr(transformers, "GgufConfig", None)  # 5.x: some architectures stay packed unless asked
    if gguf_config is not None:
        kwargs["quantization_config"] = gguf_config(dequantize=True)
    model_cls = AutoModelForSeq2SeqLM if header.architecture in SEQ2SEQ_ARCHITECTURES else AutoModelForCausalLM
    model = model_cls.from_pretrained(str(header.path.parent), **kwargs)
    model.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(str(header.path.parent), gguf_file=header.path.name)
    tokenizer.save_pretrained(directory)
