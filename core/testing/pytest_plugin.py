"""Pytest fixtures for testing tuneforge plugins (auto-loaded via the ``pytest11`` entry point).

* ``tf_plugin_manager``  a fresh :class:`PluginManager` with the installed plugins loaded
* ``tf_register``        register a plugin object (module, class instance) on that manager
* ``tf_hook_recorder``   a plugin that records every observer-hook call: ``recorder.calls``
* ``tiny_bert``          directory of a tiny random BERT + WordPiece tokenizer (no download)
* ``tiny_classification_data``  small train/dev/test CSVs whose label is learnable from the text
* ``tf_run``             run a tiny training in-process from a config dict; returns (results, run_dir)

A plugin author's test, in seconds::

    def test_my_task(tf_run, tiny_bert, tmp_path):
        results, run_dir = tf_run({"model": {"name_or_path": tiny_bert},
                                   "task": {"name": "my-task"}, "data": {...}},
                                  plugins=[my_plugin_module])
        assert results["status"] == "completed"
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tuneforge.hookspecs import hookimpl
from tuneforge.plugin_manager import PluginManager

WORDS = (
    "the a an and or but is are was were be been good bad great terrible awesome awful movie film "
    "play music song book restaurant table weather rain sun snow today tomorrow show time rate star "
    "add to my playlist find search cinema near me what will it love hate fine boring fun happy sad "
    "very not no yes this that with for of in on at by from please i you we they he she"
).split()


def write_wordpiece_vocab(path: Path) -> Path:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()")
    vocab = specials + chars + [f"##{c}" for c in chars] + sorted(set(WORDS))
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    return path


def make_tiny_bert(directory: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random BERT (masked-LM weights, any head loads from it) and tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = write_wordpiece_vocab(directory / "vocab.txt")
    vocab = {tok: i for i, tok in enumerate(vocab_file.read_text(encoding="utf-8").split())}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=128, type_vocab_size=2,
    )
    BertForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_classification_data(directory: Path, *, n_train: int = 96, n_eval: int = 32, seed: int = 0) -> dict[str, str]:
    """Sentences whose label ('pos'/'neg') is decided by a keyword: learnable in a few steps."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    filler = ["movie", "film", "book", "song", "show", "music", "play", "restaurant"]

    def rows(n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            word = rng.choice(["great", "awesome", "good", "love"] if label == "pos" else ["terrible", "awful", "bad", "hate"])
            text = f"this {rng.choice(filler)} is {word} {rng.choice(filler)}"
            out.append((text, label))
        return out

    paths = {}
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        p = directory / f"{split}.csv"
        p.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows(n)), encoding="utf-8")
        paths[split] = str(p)
    return paths


class HookRecorder:
    """A plugin object recording ``(hook_name, kwargs)`` for every observer hook."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    @hookimpl
    def tf_on_fit_start(self, run: Any) -> None:
        self.calls.append(("tf_on_fit_start", {"run": run}))

    @hookimpl
    def tf_on_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        self.calls.append(("tf_on_step_end", {"step": step, "metrics": dict(metrics)}))

    @hookimpl
    def tf_on_evaluate(self, run: Any, step: int, split: str, metrics: dict[str, float]) -> None:
        self.calls.append(("tf_on_evaluate", {"step": step, "split": split, "metrics": dict(metrics)}))

    @hookimpl
    def tf_on_checkpoint(self, run: Any, step: int, path: Path) -> None:
        self.calls.append(("tf_on_checkpoint", {"step": step, "path": path}))

    @hookimpl
    def tf_on_fit_end(self, run: Any, result: Any) -> None:
        self.calls.append(("tf_on_fit_end", {"result": result}))

    @hookimpl
    def tf_on_exception(self, run: Any, exc: BaseException) -> None:
        self.calls.append(("tf_on_exception", {"exc": exc}))


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


@pytest.fixture
def tf_plugin_manager() -> PluginManager:
    """A fresh plugin manager with the installed entry-point plugins loaded (registries not built)."""
    pm = PluginManager()
    pm.load_entry_points()
    return pm


@pytest.fixture
def tf_register(tf_plugin_manager: PluginManager) -> Callable[..., str]:
    def register(plugin: Any, name: str | None = None) -> str:
        return tf_plugin_manager.register(plugin, name=name)

    return register


@pytest.fixture
def tf_hook_recorder() -> HookRecorder:
    return HookRecorder()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def tiny_classification_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_classification_data(tmp_path_factory.mktemp("tiny-cls-data"))


@pytest.fixture
def tiny_classification_config(tiny_bert: str, tiny_classification_data: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """A complete config dict for a seconds-long classification run."""
    return {
        "model": {"name_or_path": tiny_bert},
        "task": {"name": "classification"},
        "data": {**tiny_classification_data, "max_length": 32},
        "training": {"max_steps": 40, "batch_size": 16, "lr": 3e-3, "seed": 0, "log_every_n_steps": 1},
        "evaluation": {"strategy": "steps", "every_n_steps": 20},
        "output": {"dir": str(tmp_path / "run"), "keep_last": 2},
    }


@pytest.fixture
def tf_run(tmp_path: Path) -> Iterator[Callable[..., tuple[dict[str, Any], Path]]]:
    """``tf_run(config_dict, plugins=[...], overrides=[...])`` trains in-process."""
    from tuneforge.config import apply_overrides, validate
    from tuneforge.run import train

    def run(config: dict[str, Any], plugins: list[Any] = (), overrides: list[str] = ()) -> tuple[dict[str, Any], Path]:
        raw = apply_overrides(config, list(overrides))
        raw.setdefault("output", {}).setdefault("dir", str(tmp_path / "run"))
        cfg = validate(raw)
        pm = PluginManager.default(cfg.plugins)
        for plugin in plugins:
            pm.register(plugin)
        results = train(cfg, pm)
        return results, Path(cfg.output.dir)

    yield run
