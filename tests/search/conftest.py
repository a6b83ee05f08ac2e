"""Helpers for search tests: a tiny run config plus a ``search:`` section, written as YAML."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture
def search_config(tiny_classification_config: dict[str, Any], tmp_path: Path):
    """``search_config(search_section, **section_overrides) -> path`` of a config YAML."""

    def make(search: dict[str, Any], name: str = "search.yaml", **sections: Any) -> Path:
        raw = copy.deepcopy(tiny_classification_config)
        for key, value in sections.items():
            raw.setdefault(key, {}).update(value)
        raw["search"] = {"dir": str(tmp_path / "study"), **search}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        return path

    return make
