"""``tuneforge export``: copy a run's model, or merge its LoRA adapter into a full model that
plain ``transformers`` loads with the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tuneforge.builders import load_trained_model
from tuneforge.cli import main
from tuneforge.config import read_yaml, validate
from tuneforge.run import train


@pytest.fixture(scope="module")
def lora_run(tiny_bert, tiny_classification_data, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("export") / "run"
    train(validate({
        "model": {"name_or_path": tiny_bert},
        "task": {"name": "classification"},
        "data": {**tiny_classification_data, "max_length": 32},
        "training": {"max_steps": 12, "batch_size": 16, "lr": 3e-2, "seed": 0},
        "evaluation": {"strategy": "no"},
        "adapter": {"type": "lora", "r": 4, "alpha": 8},
        "output": {"dir": str(out)},
    }))
    return out


def test_merge_writes_a_full_model_plain_transformers_loads(lora_run, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", "--run", str(lora_run), "--merge", "--output", str(out)]) == 0
    assert '"merged": true' in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "task_state.json").is_file()

    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    assert not any("lora" in n for n, _ in merged.named_parameters())
    config = validate(read_yaml(lora_run / "config.yaml"))
    _, _, peft_model = load_trained_model(config, lora_run / "model")
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["this movie is great film", "this book is awful show"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected, got = peft_model(**batch).logits, merged(**batch).logits
    assert torch.allclose(expected, got, atol=1e-5), (expected, got)
    # the merged weights differ from the base: the adapter was really folded in
    base = AutoModelForSequenceClassification.from_pretrained(config.model.name_or_path, num_labels=2)
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(base.state_dict()[q], merged.state_dict()[q])


def test_export_without_merge_copies_the_adapter(lora_run, tmp_path):
    out = tmp_path / "adapter"
    assert main(["export", "--run", str(lora_run), "--output", str(out)]) == 0
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "adapter_model.safetensors").read_bytes() == (lora_run / "model/adapter_model.safetensors").read_bytes()


def test_export_errors_are_one_line_and_exit_2(lora_run, tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path / "nope")]) == 2
    assert "is not a run directory: config.yaml is missing" in capsys.readouterr().err
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("keep")
    assert main(["export", "--run", str(lora_run), "--output", str(out)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["export", "--run", str(lora_run), "--output", str(out), "--overwrite"]) == 0
    assert not (out / "x").exists()
