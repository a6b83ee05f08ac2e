"""Safe loading: YAML via safe_load, weights as safetensors, trust_remote_code only when
the config says so, and no unpickling of a checkpoint file that fails its manifest.

Why loading our own checkpoints is acceptable: Accelerate's ``load_state`` reads
``optimizer.bin``, ``scheduler.bin`` and ``random_states_*.pkl`` with ``torch.load``;
in accelerate 1.15 / torch >= 2.4 that is ``weights_only=True`` (a restricted unpickler
that refuses arbitrary globals), and tuneforge verifies every file against the
checkpoint's manifest (sha256 + size) before ``load_state`` runs, so a swapped or
damaged pickle is rejected before it is opened. The manifest is integrity, not
authenticity: resuming from a checkpoint someone else wrote means trusting them,
exactly like running their code.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from tuneforge.checkpoint import MANIFEST, CheckpointManager, write_manifest
from tuneforge.config import validate
from tuneforge.errors import CheckpointError, ConfigError
from tuneforge.preflight import preflight


class _Exploit:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.fixture
def short_run(tf_run, tiny_classification_config: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    cfg = {**tiny_classification_config, "evaluation": {"strategy": "no"},
           "training": {**tiny_classification_config["training"], "max_steps": 6}}
    cfg["output"] = {**cfg["output"], "save_every_n_steps": 3}
    _, run_dir = tf_run(cfg)
    return cfg, run_dir


def test_weights_are_safetensors_everywhere(short_run) -> None:
    _, run_dir = short_run
    for ckpt in CheckpointManager(run_dir).complete():
        assert (ckpt / "model.safetensors").is_file()
        assert not list(ckpt.glob("pytorch_model*.bin"))
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert not list((run_dir / "model").glob("*.bin"))


def test_swapped_pickle_is_rejected_before_unpickling(tf_run, short_run, tmp_path: Path) -> None:
    cfg, run_dir = short_run
    marker = tmp_path / "code-ran"
    newest = CheckpointManager(run_dir).complete()[-1]
    rng = next(newest.glob("random_states_*.pkl"))
    rng.write_bytes(pickle.dumps(_Exploit(marker)))

    with pytest.raises(CheckpointError, match=rf"{rng.name}'.*(sha256|bytes)"):
        tf_run(cfg, overrides=[f"resume={newest}"])  # explicit path: verified, refused
    assert not marker.exists()

    results, _ = tf_run(cfg, overrides=["resume=auto", "training.max_steps=7"])  # auto: falls back to step 3
    assert results["steps"] == 7 and not marker.exists()


def test_restricted_unpickler_even_when_the_manifest_is_rewritten(tf_run, short_run, tmp_path: Path) -> None:
    """Defence in depth: a pickle with a matching manifest still cannot run code (weights_only)."""
    cfg, run_dir = short_run
    marker = tmp_path / "code-ran"
    newest = CheckpointManager(run_dir).complete()[-1]
    rng = next(newest.glob("random_states_*.pkl"))
    rng.write_bytes(pickle.dumps(_Exploit(marker)))
    write_manifest(newest)
    with pytest.raises(CheckpointError, match="random states cannot be read"):
        tf_run(cfg, overrides=[f"resume={newest}"])
    assert not marker.exists()
    assert json.loads((newest / MANIFEST).read_text())["files"]


def test_trust_remote_code_is_off_unless_configured(tiny_classification_config: dict[str, Any], monkeypatch) -> None:
    import transformers

    seen: list[bool] = []

    def fake_from_pretrained(name: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("trust_remote_code"))
        raise RuntimeError("stop here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", fake_from_pretrained)
    for flag in (None, True):
        raw = dict(tiny_classification_config)
        if flag is not None:
            raw["model"] = {**raw["model"], "trust_remote_code": flag}
        task = preflight(validate(raw), check_output=False).make_task()
        with pytest.raises(RuntimeError, match="stop here"):
            task.load_tokenizer()
        with pytest.raises(RuntimeError, match="stop here"):
            task.build_model(None)
    assert seen == [False, False, True, True]


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    from tuneforge.config import load_config

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"model: !!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not marker.exists()


def test_accelerate_load_uses_the_restricted_unpickler(tmp_path: Path) -> None:
    """The fact the reasoning above rests on, checked against the installed accelerate."""
    from accelerate.utils import load

    path = tmp_path / "x.pkl"
    torch.save({"fine": torch.ones(2)}, path)
    assert torch.equal(load(path)["fine"], torch.ones(2))
    marker = tmp_path / "code-ran"
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(pickle.UnpicklingError):
        load(path)
    assert not marker.exists()
