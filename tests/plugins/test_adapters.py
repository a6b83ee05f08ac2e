"""The PEFT adapter plugins: options, per-architecture defaults, target errors, training,
adapter-only export, reload, and exact resume from an adapter checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tuneforge import hookimpl
from tuneforge.builders import load_trained_model
from tuneforge.config import apply_overrides, load_config, read_yaml, resolve_paths, validate
from tuneforge.errors import ConfigError
from tuneforge.plugin_manager import PluginManager
from tuneforge.plugins.adapters import LoraAdapter, default_targets, module_patterns, task_head_modules
from tuneforge.preflight import preflight
from tuneforge.run import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from several threads; on a shared machine they lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def adapters():
    return PluginManager.default().build_registries().adapters


def make_adapter(adapters, cfg: dict, **options):
    """An adapter instance for a full config dict with ``adapter: options``."""
    config = validate({**cfg, "adapter": options})
    cls = adapters.get(options["type"])
    return cls(cls.parse_options(config.adapter.options()), config)


# -- tiny models of each architecture, built from configs (no files, no downloads) --------


def tiny(arch: str, head: str = "lm") -> torch.nn.Module:
    import transformers as tr

    torch.manual_seed(0)
    if arch == "bert":
        c = tr.BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
        return tr.BertForSequenceClassification(c) if head == "cls" else tr.BertForMaskedLM(c)
    if arch == "t5":
        c = tr.T5Config(vocab_size=99, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
        return tr.T5ForConditionalGeneration(c)
    if arch == "gpt2":
        return tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=99, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    c = tr.LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    return tr.LlamaForSequenceClassification(c) if head == "cls" else tr.LlamaForCausalLM(c)


@pytest.mark.parametrize(
    ("arch", "head", "targets", "heads"),
    [
        ("bert", "cls", ["query", "value"], ["classifier"]),
        ("bert", "lm", ["query", "value"], []),  # the MLM head holds the tied output embeddings
        ("t5", "lm", ["q", "v"], []),
        ("gpt2", "lm", ["c_attn"], []),
        ("llama", "lm", ["q_proj", "v_proj"], []),
        ("llama", "cls", ["q_proj", "v_proj"], ["score"]),
    ],
)
def test_default_targets_and_task_head_per_architecture(adapters, tiny_classification_config, arch, head, targets, heads):
    model = tiny(arch, head)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as lora_map

    assert default_targets(model, lora_map, "lora") == targets
    assert task_head_modules(model) == heads
    wrapped = make_adapter(adapters, tiny_classification_config, type="lora", r=2).apply(model, None)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or any(f".{h}.modules_to_save." in n for h in heads) for n in trainable)
    assert all(any(f".{h}.modules_to_save." in n for n in trainable) for h in heads)
    lora_layers = {n.rsplit(".", 1)[-1] for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert lora_layers == set(targets)


def test_unknown_target_names_the_modules_that_exist(adapters, tiny_classification_config):
    adapter = make_adapter(adapters, tiny_classification_config, type="lora", target_modules=["qury", "value"])
    with pytest.raises(ConfigError) as err:
        adapter.apply(tiny("bert", "cls"), None)
    msg = str(err.value)
    assert "['qury']" in msg and "did you mean 'query'" in msg
    assert "attention.self.query" in msg and "intermediate.dense" in msg and "classifier" in msg


def test_mistyped_target_is_caught_by_preflight_before_any_model_is_loaded(adapters, tiny_classification_config):
    cfg = {**tiny_classification_config, "adapter": {"type": "dora", "target_modules": ["qury", "value"]}}
    with pytest.raises(ConfigError, match=r"\['qury'\] match no module of this BertModel \(did you mean 'query'\?\)"):
        preflight(validate(cfg), check_output=False)
    # the preflight skeleton has no task head: a head module is a valid target there ...
    cfg["adapter"]["target_modules"] = ["query", "classifier"]
    preflight(validate(cfg), check_output=False)
    # ... and a name like nothing in the model is left to the check on the real model
    cfg["adapter"]["target_modules"] = ["q_proj"]
    preflight(validate(cfg), check_output=False)
    with pytest.raises(ConfigError, match=r"\['q_proj'\] match no module of this BertForSequenceClassification"):
        make_adapter(adapters, cfg, type="dora", target_modules=["q_proj"]).apply(tiny("bert", "cls"), None)


def test_module_patterns_strip_layer_indices():
    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.query", "classifier"]
    assert module_patterns(names) == ["attention.self.query", "classifier"]


def test_adapter_keys_are_ordinary_overridable_config_keys(adapters, tiny_classification_config):
    raw = apply_overrides({**tiny_classification_config, "adapter": {"type": "lora"}},
                          ["adapter.r=16", "adapter.alpha=32", "adapter.target_modules=[query,key,value]"])
    config = validate(raw)
    options = adapters.get("lora").parse_options(config.adapter.options())
    assert (options.r, options.alpha, options.target_modules) == (16, 32, ["query", "key", "value"])
    with pytest.raises(ConfigError, match=r"unknown key 'adapter.rank'.*valid keys here: .*\br\b"):
        adapters.get("lora").parse_options({"rank": 4})
    with pytest.raises(ConfigError, match=r"adapter.dropout"):
        adapters.get("lora").parse_options({"dropout": 1.5})


def test_dora_and_ia3_insert_their_own_layers(adapters, tiny_classification_config):
    dora = make_adapter(adapters, tiny_classification_config, type="dora", r=2).apply(tiny("bert", "cls"), None)
    assert any("lora_magnitude_vector" in n for n, _ in dora.named_parameters())
    ia3 = make_adapter(adapters, tiny_classification_config, type="ia3").apply(tiny("bert", "cls"), None)
    scaled = {n.rsplit(".", 1)[0].split("encoder.layer.0.")[-1] for n, p in ia3.named_parameters()
              if "ia3_l" in n and ".layer.0." in n}
    # PEFT's BERT default: key, value and every "output.dense" (suffix match)
    assert scaled == {"attention.self.key.ia3_l", "attention.self.value.ia3_l", "attention.output.dense.ia3_l",
                      "output.dense.ia3_l"}
    trainable = [n for n, p in ia3.named_parameters() if p.requires_grad]
    assert all("ia3_l" in n or "classifier" in n for n in trainable)


def test_peft_passthrough_builds_any_method_by_name(adapters, tiny_classification_config):
    loha = make_adapter(adapters, tiny_classification_config, type="peft", method="LoHa",
                        kwargs={"r": 2, "target_modules": ["query", "value"]})
    model = loha.apply(tiny("bert", "cls"), None)
    assert type(model.base_model).__name__ == "LoHaModel"
    assert model.peft_config["default"].modules_to_save == ["classifier"]  # the task head, as for lora
    vera = make_adapter(adapters, tiny_classification_config, type="peft", method="vera", kwargs={"r": 4})
    assert type(vera.apply(tiny("bert", "cls"), None).base_model).__name__ == "VeraModel"  # default targets

    cases = [
        ({"method": "lokrr"}, r"unknown adapter.method 'lokrr'.*did you mean 'lokr'.*offers: .*loha"),
        ({"method": "loha", "kwargs": {"alpah": 2}}, r"unknown key 'adapter.kwargs.alpah' for LoHaConfig.*did you mean 'alpha'"),
        ({"method": "prompt_tuning", "kwargs": {"num_virtual_tokens": 4}}, r"needs adapter.kwargs.task_type.*SEQ_CLS"),
        ({"method": "adalora"}, r"update_and_allocate"),
        ({"method": "loha", "kwargs": {"target_modules": ["nope"]}}, r"kwargs.target_modules \['nope'\]"),
    ]
    for options, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            make_adapter(adapters, tiny_classification_config, type="peft", **options).preflight()


def test_qlora_without_bitsandbytes_or_cuda_fails_in_preflight(tiny_classification_config):
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("this machine can run QLoRA")
    cfg = {**tiny_classification_config, "adapter": {"type": "qlora", "bits": 4}}
    with pytest.raises(ConfigError, match=r"adapter 'qlora'.*(bitsandbytes|CUDA).*adapter.type=lora"):
        preflight(validate(cfg), check_output=False)


def test_qlora_loads_the_base_quantised_once_and_refuses_a_full_precision_model(adapters, tiny_classification_config):
    """QLoRA never builds the full-precision base first: its quantization_config goes into the task's
    own from_pretrained call (Adapter.model_kwargs), heads and the LM head stay unquantised."""
    adapter = make_adapter(adapters, tiny_classification_config, type="qlora", bits=4, modules_to_save=["my_head"])
    kwargs = adapter.model_kwargs()
    q = kwargs["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and kwargs["dtype"] == torch.bfloat16
    assert {"my_head", "classifier", "score", "lm_head"} <= set(q.llm_int8_skip_modules)
    assert kwargs["device_map"] == {"": 0}
    eight = make_adapter(adapters, tiny_classification_config, type="qlora", bits=8).model_kwargs()
    assert eight["quantization_config"].load_in_8bit
    with pytest.raises(ConfigError, match="built its model without the adapter's quantization_config"):
        adapter.apply(tiny("bert", "cls"), None)


class _EagerLora(LoraAdapter):
    name = "lora-eager"

    def model_kwargs(self):
        return {"attn_implementation": "eager", "hidden_dropout_prob": 0.0}


class _EagerAttention:
    """An adapter plugin whose model_kwargs must reach the task's from_pretrained."""

    @hookimpl
    def tf_register_adapters(self, register):
        register("lora-eager", _EagerLora)


def test_adapter_model_kwargs_reach_the_tasks_from_pretrained(tiny_bert, tiny_classification_data, tmp_path):
    from tuneforge.plugin_manager import PluginManager

    config = cpu_config(tiny_bert, tiny_classification_data, tmp_path / "run", "training.max_steps=2",
                        "evaluation.strategy=no", adapter={"type": "lora-eager", "r": 2})
    seen = {}

    class Probe:
        @hookimpl
        def tf_on_fit_start(self, run):
            cfg = run.runtime.unwrap(run.model).config
            seen.update(attn=cfg._attn_implementation, dropout=cfg.hidden_dropout_prob)

    pm = PluginManager.default()
    pm.register(_EagerAttention(), name="eager-adapter")
    pm.register(Probe(), name="probe")
    train(config, pm)
    assert seen == {"attn": "eager", "dropout": 0.0}


def test_single_gpu_config_is_valid():
    config = load_config(REPO / "configs/lora-single-gpu.yaml")
    assert config.adapter is not None and config.adapter.type == "lora"
    assert config.training.mixed_precision == "bf16"
    pm = PluginManager.default().build_registries()
    options = pm.adapters.get("lora").parse_options(config.adapter.options())
    assert options.r == 8 and options.target_modules is None


# -- real runs on the tiny BERT ------------------------------------------------------------


def cpu_config(tiny_bert: str, data: dict[str, str], out: Path, *extra: str, adapter: dict | None = None):
    """configs/lora-cpu.yaml pointed at the tiny model and data (``adapter`` replaces its adapter section)."""
    path = REPO / "configs/lora-cpu.yaml"
    raw = read_yaml(path)
    resolve_paths(raw, path.parent)
    if adapter is not None:
        raw["adapter"] = adapter
    return validate(apply_overrides(raw, [
        f"model.name_or_path={tiny_bert}", f"data.train={data['train']}", f"data.validation={data['validation']}",
        f"data.test={data['test']}", "data.max_length=32", "training.max_steps=40", "training.batch_size=16",
        "training.lr=3e-2", "training.warmup_ratio=0", "training.seed=0", "training.log_every_n_steps=1",
        "evaluation.strategy=steps", "evaluation.every_n_steps=20", f"output.dir={out}", *extra,
    ]))


def test_lora_run_learns_exports_only_the_adapter_and_reloads(tiny_bert, tiny_classification_data, tmp_path):
    config = cpu_config(tiny_bert, tiny_classification_data, tmp_path / "run")
    results = train(config)
    run_dir = tmp_path / "run"
    assert results["status"] == "completed" and results["test"]["accuracy"] >= 0.9

    params = json.loads((run_dir / "params.json").read_text())["parameters"]
    assert 0 < params["trainable"] < 0.15 * params["total"]  # tiny model: head + pooler dominate
    assert params["trainable_fraction"] == pytest.approx(params["trainable"] / params["total"])

    model_dir = run_dir / "model"
    assert (model_dir / "adapter_model.safetensors").is_file() and (model_dir / "adapter_config.json").is_file()
    assert not (model_dir / "model.safetensors").exists()
    # the tiny BERT's checkpoint has no pooler: random weights are trained and saved, not lost
    saved = json.loads((model_dir / "adapter_config.json").read_text())["modules_to_save"]
    assert saved == ["classifier", "bert.pooler"]
    with safe_open(model_dir / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k or ".classifier." in k or ".pooler." in k for k in keys), keys
    assert any("classifier.modules_to_save" in k or k.endswith("classifier.weight") for k in keys)
    full = next((run_dir / "checkpoints").glob("step-*/model.safetensors"))
    assert (model_dir / "adapter_model.safetensors").stat().st_size * 5 < full.stat().st_size

    # base + adapter reloads and reproduces the run's test accuracy
    task, tokenizer, model = load_trained_model(config, model_dir)
    records = task.read(config.data.test, "test")
    batch = task.collate(task.encode(records, tokenizer, "test"), tokenizer)
    with torch.no_grad():
        out = task.evaluation_step(model, batch)
    accuracy = (out["predictions"] == out["labels"]).float().mean().item()
    assert accuracy == pytest.approx(results["test"]["accuracy"])


class StopAfterCheckpoint:
    """A crash right after the checkpoint of ``step`` is complete."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def tf_on_checkpoint(self, run, step, path):
        if step == self.step:
            raise KeyboardInterrupt


def train_losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["loss"] for x in lines if x["split"] == "train"}


def test_resume_from_an_adapter_checkpoint_continues_exactly(tiny_bert, tiny_classification_data, tmp_path):
    """2N steps straight vs N, a crash, and N more resumed: the same per-step losses (LoRA dropout on)."""
    n = 8  # 96 examples / batch 16 = 6 batches per epoch: the crash is mid-epoch 2
    extra = [f"training.max_steps={2 * n}", "evaluation.strategy=no", f"output.save_every_n_steps={n}",
             "adapter.dropout=0.2"]
    straight = train(cpu_config(tiny_bert, tiny_classification_data, tmp_path / "straight", *extra))

    config = cpu_config(tiny_bert, tiny_classification_data, tmp_path / "resumed", *extra)
    pm = PluginManager.default()
    pm.register(StopAfterCheckpoint(n))
    with pytest.raises(KeyboardInterrupt):
        train(config, pm)
    resumed = train(cpu_config(tiny_bert, tiny_classification_data, tmp_path / "resumed", *extra, "resume=auto"))

    a, b = train_losses(tmp_path / "straight"), train_losses(tmp_path / "resumed")
    assert sorted(a) == sorted(b) == list(range(1, 2 * n + 1))
    for step in range(1, 2 * n + 1):
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    assert abs(a[2 * n] - a[1]) > 1e-3  # the adapter did train
    assert straight["test"]["accuracy"] == pytest.approx(resumed["test"]["accuracy"], abs=1e-9)


def test_lora_on_a_causal_lm(request, tmp_path):
    """LoRA on the tiny Llama of the causal-LM task, when that task and fixture are installed."""
    if "causal_lm" not in PluginManager.default().build_registries().tasks:
        pytest.skip("the causal_lm task plugin is not installed")
    try:
        cfg = request.getfixturevalue("tiny_causal_lm_config")
    except pytest.FixtureLookupError:
        pytest.skip("the tiny_causal_lm_config fixture is not available")
    cfg = {**cfg, "adapter": {"type": "lora", "r": 4}, "training": {**cfg["training"], "max_steps": 12},
           "evaluation": {"strategy": "no"}, "output": {"dir": str(tmp_path / "clm")}}
    results = train(validate(cfg))
    assert results["status"] == "completed"
    lines = [json.loads(x) for x in (tmp_path / "clm" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if x["split"] == "train"]
    assert losses[-1] < losses[0]
    config = json.loads((tmp_path / "clm" / "model" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and not config["modules_to_save"]
