"""Pytest fixtures for testing tuneforge plugins (auto-loaded via the ``pytest11`` entry point).

Each fixture's docstring is its reference; the fixture table of ``docs/writing-plugins.md``
is checked against them (``tests/test_plugins.py``). ``tf_plugin_manager`` is the test's
plugin manager: ``tf_register`` adds to it, and ``tf_run`` trains with it.

A plugin author's test, in seconds::

    def test_my_task(tf_run, tiny_bert, tmp_path):
        results, run_dir = tf_run({"model": {"name_or_path": tiny_bert},
                                   "task": {"name": "my-task"}, "data": {...}},
                                  plugins=[my_plugin_module])
        assert results["status"] == "completed"
"""

from __future__ import annotations

import copy
import functools
import inspect
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tuneforge import hookspecs
from tuneforge.hookspecs import hookimpl
from tuneforge.plugin_manager import PluginManager

WORDS = ["the", "a", "an", "and", "or", "but", "is", "are", "was", "were", "be", "been", "good", "bad", "great", "terrible", "awesome", "awful", "movie", "film", "play", "music", "song", "book", "restaurant", "table", "weather", "rain", "sun", "snow", "today", "tomorrow", "show", "time", "rate", "star", "add", "to", "my", "playlist", "find", "search", "cinema", "near", "me", "what", "will", "it", "love", "hate", "fine", "boring", "fun", "happy", "sad", "very", "not", "no", "yes", "this", "that", "with", "for", "of", "in", "on", "at", "by", "from", "please", "i", "you", "we", "they", "he", "she"]


def write_wordpiece_vocab(path: Path) -> Path:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()")
    vocab = specials + chars + [f"##{c}" for c in chars] + sorted(set(WORDS))
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    return path


def make_tiny_bert(directory: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random BERT (masked-LM weights, any head loads from it) and tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast  # type: ignore[attr-defined]

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
    """A plugin object recording ``(hook_name, kwargs)`` for every observer hook of
    :mod:`tuneforge.hookspecs` (dict arguments such as ``metrics`` are copied)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        for name in hookspecs.OBSERVER_HOOKS:
            setattr(self, name, self._recorder(name))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def _recorder(self, name: str) -> Callable[..., None]:
        spec = getattr(hookspecs, name)
        argnames = list(inspect.signature(spec).parameters)

        def record(*args: Any) -> None:
            self.calls.append((name, {k: dict(v) if isinstance(v, dict) else v for k, v in zip(argnames, args)}))

        functools.update_wrapper(record, spec, updated=())  # pluggy reads the argument names through __wrapped__
        return hookimpl(record)


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
    """``tf_register(plugin, name=None)`` registers a module or object on ``tf_plugin_manager``
    (so it takes part in ``tf_run``); returns the name it is known by."""

    def register(plugin: Any, name: str | None = None) -> str:
        return tf_plugin_manager.register(plugin, name=name)

    return register


@pytest.fixture
def tf_hook_recorder() -> HookRecorder:
    """A plugin recording every observer-hook call: ``recorder.calls`` (``(hook, kwargs)``),
    ``recorder.names()``; pass it to ``tf_run(..., plugins=[recorder])``."""
    return HookRecorder()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Directory of a tiny random BERT and WordPiece tokenizer (built in code, no download)."""
    return str(make_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def tiny_classification_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths of small train/validation/test CSVs (``text``, ``label``) whose label is learnable
    from a keyword."""
    return make_classification_data(tmp_path_factory.mktemp("tiny-cls-data"))


@pytest.fixture
def tiny_classification_config(tiny_bert: str, tiny_classification_data: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """A complete config dict for a seconds-long classification run on ``tiny_bert``."""
    return {
        "model": {"name_or_path": tiny_bert},
        "task": {"name": "classification"},
        "data": {**tiny_classification_data, "max_length": 32},
        "training": {"max_steps": 40, "batch_size": 16, "lr": 3e-3, "seed": 0, "log_every_n_steps": 1},
        "evaluation": {"strategy": "steps", "every_n_steps": 20},
        "output": {"dir": str(tmp_path / "run"), "keep_last": 2},
    }


@pytest.fixture
def tf_run(tf_plugin_manager: PluginManager, tmp_path: Path) -> Iterator[Callable[..., tuple[dict[str, Any], Path]]]:
    """``tf_run(config, plugins=[...], overrides=[...]) -> (results, run_dir)`` trains in-process.

    Every call gets a fresh plugin manager holding what ``tf_plugin_manager`` holds (the entry
    points and what ``tf_register`` added) plus that call's ``plugins``, as every real run gets
    its own; a plugin already registered (e.g. by its entry point) is not registered twice."""
    from tuneforge.config import apply_overrides, env_overrides, validate
    from tuneforge.run import train

    def run(config: dict[str, Any], plugins: Sequence[Any] = (), overrides: Sequence[str] = ()) -> tuple[dict[str, Any], Path]:
        raw = apply_overrides(config, [*overrides, *env_overrides()])
        raw.setdefault("output", {}).setdefault("dir", str(tmp_path / "run"))
        cfg = validate(raw, source="tf_run config")
        pm = tf_plugin_manager.fork()
        for module in cfg.plugins:
            pm.load_module(module)
        for plugin in plugins:
            pm.register(plugin)
        results = train(cfg, pm)
        return results, Path(cfg.output.dir)

    yield run


# -- tiny causal language models (instruction tuning, LoRA, ZeRO-3, multi-node tests) ---------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT_SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def make_tiny_chat_tokenizer(vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained in code (no download) with pad ``<pad>``, bos ``<s>``,
    eos ``</s>`` and a Jinja chat template rendering ``<|role|>\\ncontent</s>\\n`` turns.
    Byte-level: any text encodes without unknown tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=CHAT_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([" ".join(WORDS)] * 3 + [" " + w for w in WORDS], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=CHAT_SPECIALS[3:], chat_template=CHAT_TEMPLATE,
    )


def make_tiny_causal_lm(directory: Path, *, arch: str = "llama", hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random causal LM (``arch``: ``llama`` or ``gpt2``) with the tiny chat tokenizer.

    Llama: q/k/v/o_proj + gate/up/down_proj linear layers (LoRA targets), grouped-query
    attention (2 heads, 1 KV head). GPT-2: Conv1D ``c_attn``/``c_proj``. About 45k parameters.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_chat_tokenizer()
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(seed)
    model: Any
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=False, **ids,
        ))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=hidden, n_layer=layers, n_head=2, n_positions=256, **ids))
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


OPPOSITES = {"good": "bad", "great": "terrible", "awesome": "awful", "love": "hate", "happy": "sad",
             "yes": "no", "sun": "rain", "today": "tomorrow", "fun": "boring", "this": "that"}


def make_instruction_data(directory: Path, *, n_train: int = 64, n_eval: int = 16, seed: int = 0) -> dict[str, str]:
    """Instruction data whose answer is a fixed function of the prompt (learnable in seconds).

    Writes ``{split}.jsonl`` with ``prompt``/``response`` fields and ``chat_{split}.jsonl``
    with the same pairs as chat ``messages`` (a system turn on every other record).
    Returns the prompt/response paths (train/validation/test); the chat files sit beside them.
    """
    import json

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    words = sorted(OPPOSITES)
    paths = {}
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        plain, chat = [], []
        for i in range(n):
            a, b = rng.choice(words), rng.choice(words)
            prompt = f"what is the opposite of {a} and {b}"
            response = f"{OPPOSITES[a]} and {OPPOSITES[b]}"
            plain.append({"prompt": prompt, "response": response})
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            if i % 2:
                messages.insert(0, {"role": "system", "content": "you are fine"})
            chat.append({"messages": messages})
        for name, rows in ((f"{split}.jsonl", plain), (f"chat_{split}.jsonl", chat)):
            (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[split] = str(directory / f"{split}.jsonl")
    return paths


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Directory of a tiny random Llama + byte-level BPE tokenizer with a chat template."""
    return str(make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"), arch="llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Directory of a tiny random GPT-2 + the same tokenizer (Conv1D layers, learned positions)."""
    return str(make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-gpt2"), arch="gpt2"))


@pytest.fixture(scope="session")
def tiny_instruction_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths of prompt/response jsonl files (train/validation/test; ``chat_*.jsonl`` with the same
    pairs as ``messages`` beside them) whose answer is a fixed function of the prompt."""
    return make_instruction_data(tmp_path_factory.mktemp("tiny-instruct-data"))


@pytest.fixture
def tiny_causal_lm_config(tiny_llama: str, tiny_instruction_data: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """A complete config dict for a seconds-long causal-LM instruction-tuning run on ``tiny_llama``
    (30 steps; validation perplexity every 15); add ``adapter:``/``distributed:`` to test those."""
    return {
        "model": {"name_or_path": tiny_llama},
        "task": {"name": "causal_lm"},
        "data": {**tiny_instruction_data, "max_length": 48},
        "training": {"max_steps": 30, "batch_size": 8, "lr": 1e-2, "seed": 0, "log_every_n_steps": 1},
        "evaluation": {"strategy": "steps", "every_n_steps": 15},
        "output": {"dir": str(tmp_path / "run"), "keep_last": 1},
    }


@pytest.fixture
def tf_single_thread() -> Iterator[None]:
    """Torch on one intra-op thread for the test: ``pytestmark = pytest.mark.usefixtures("tf_single_thread")``.

    Tiny models gain nothing from more, and on a loaded machine OpenMP threads waiting on each
    other make a step 10-20x slower (measured: 0.09 s vs 2.2 s per tiny-Llama step)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
