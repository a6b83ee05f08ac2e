"""Model shapes from a config alone: the architecture of a Hugging Face config (or a GGUF
header) and its module table (every embedding, linear layer and norm with the names Hugging
Face gives them), from which parameters and LoRA targets are counted without instantiating
the model. :mod:`tuneforge.estimate` turns them into memory."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError

DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta")
SUPPORTED_TYPES = (*DECODER_TYPES, "gpt2", *ENCODER_TYPES)


# -- the architecture ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """The shape of a model, as far as memory is concerned."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = True
    positions: int = 0  # learned position embeddings (0: rotary)
    token_types: int = 0
    attention_bias: bool = False
    mlp_bias: bool = False
    eager_attention: bool = False

    @property
    def family(self) -> str:
        if self.model_type in DECODER_TYPES:
            return "decoder-eager" if self.eager_attention else "decoder"
        return "gpt2" if self.model_type == "gpt2" else "encoder"


def architecture_from_config(cfg: Mapping[str, Any], source: str = "model.name_or_path") -> Architecture:
    """The :class:`Architecture` of a Hugging Face config (``PretrainedConfig.to_dict()``)."""
    kind = str(cfg.get("model_type", ""))
    if kind not in SUPPORTED_TYPES:
        raise ConfigError(
            f"{source}: tuneforge estimate counts the architectures {', '.join(SUPPORTED_TYPES)}; "
            f"this model is '{kind or 'unknown'}'"
        )
    eager = cfg.get("_attn_implementation") == "eager" or cfg.get("attn_implementation") == "eager"
    if kind == "gpt2":
        h = int(cfg["n_embd"])
        return Architecture(kind, h, int(cfg["n_layer"]), int(cfg["n_head"]), int(cfg["n_head"]),
                            h // int(cfg["n_head"]), int(cfg.get("n_inner") or 4 * h), int(cfg["vocab_size"]),
                            tied=bool(cfg.get("tie_word_embeddings", True)), positions=int(cfg["n_positions"]),
                            attention_bias=True, mlp_bias=True)
    h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    common: dict[str, Any] = {"hidden": h, "layers": int(cfg["num_hidden_layers"]), "heads": heads,
              "intermediate": int(cfg["intermediate_size"]), "vocab": int(cfg["vocab_size"])}
    if kind in ENCODER_TYPES:
        return Architecture(kind, kv_heads=heads, head_dim=h // heads, positions=int(cfg["max_position_embeddings"]),
                            token_types=int(cfg.get("type_vocab_size") or 0), attention_bias=True, mlp_bias=True,
                            **common)
    return Architecture(
        kind, kv_heads=int(cfg.get("num_key_value_heads") or heads), head_dim=int(cfg.get("head_dim") or h // heads),
        tied=bool(cfg.get("tie_word_embeddings", False)), attention_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)), eager_attention=eager, **common,
    )


def read_model_config(config: RunConfig) -> dict[str, Any]:
    """The model's Hugging Face config (a dict, defaults filled in) from its config alone: a GGUF
    header, a local (``pkg:``) directory's ``config.json``, or a hub name's config in the local
    cache (no download), with ``model.config_overrides`` applied."""
    from tuneforge import gguf
    from tuneforge.hub import resolve_pretrained

    m = config.model
    source = gguf.gguf_source(m.name_or_path, m.gguf_file)
    raw = gguf_config(gguf.check(source)) if source is not None else {"name_or_path": resolve_pretrained(m.name_or_path)}
    return hf_config(raw, m.revision, m.config_overrides)


def hf_config(raw: dict[str, Any], revision: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A full Hugging Face config dict (defaults filled in): ``raw`` holds either
    ``name_or_path`` (loaded with ``AutoConfig``, local files only) or a ``model_type`` and its keys."""
    from transformers import AutoConfig

    name = raw.get("name_or_path")
    try:
        if name is not None:
            cfg = AutoConfig.from_pretrained(name, revision=revision, local_files_only=True, **overrides)
        else:
            cfg = AutoConfig.for_model(**{**raw, **overrides})
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"'{name}'" if name is not None else f"the GGUF header ({raw.get('model_type')})"
        raise ConfigError(
            f"model.name_or_path: no usable model config for {where} ({first}); estimate reads a local directory, "
            "a pkg: directory, a .gguf file or a hub model already in the local cache"
        ) from None
    return dict(cfg.to_dict())


def gguf_config(header: Any) -> dict[str, Any]:
    """Hugging Face config keys from a GGUF header, renamed as transformers renames them when it
    loads the file (``llama.embedding_length`` -> ``hidden_size``...); tied embeddings when the
    file has no ``output.weight``, the vocabulary size from the tokenizer when the metadata lacks it."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    from tuneforge.gguf import ARCHITECTURE_ALIASES

    arch = header.architecture
    renames: Mapping[str, Any] = GGUF_CONFIG_MAPPING.get(arch) or {}  # type: ignore[assignment]
    out: dict[str, Any] = {"model_type": ARCHITECTURE_ALIASES.get(arch, arch)}
    for key, value in header.metadata.items():
        target = renames.get(key.removeprefix(f"{arch}."))
        if key.startswith(f"{arch}.") and isinstance(target, str):
            out[target] = value
    out.setdefault("vocab_size", header.metadata.get("tokenizer.ggml.tokens"))
    out["tie_word_embeddings"] = "output.weight" not in header.tensor_names
    return out


# -- the module table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    """One module with parameters: its Hugging Face name, kind, shape and parameter count."""

    name: str
    kind: str  # embedding | linear | norm
    fan_in: int
    fan_out: int
    params: int
    layer: int | None = None  # index of the transformer block holding it


def _linear(name: str, fan_in: int, fan_out: int, bias: bool, layer: int | None = None) -> Module:
    return Module(name, "linear", fan_in, fan_out, fan_in * fan_out + (fan_out if bias else 0), layer)


def _norm(name: str, width: int, bias: bool, layer: int | None = None) -> Module:
    return Module(name, "norm", width, width, width * (2 if bias else 1), layer)


def _embedding(name: str, rows: int, width: int) -> Module:
    return Module(name, "embedding", rows, width, rows * width)


def module_table(arch: Architecture) -> list[Module]:
    """Every module with parameters, named as in the model a task builds (``model.layers.0.self_attn.q_proj``
    for a Llama causal LM, ``transformer.h.0.attn.c_attn`` for GPT-2, ``bert.encoder.layer.0...`` for BERT).
    A tied LM head has no row: it shares the input embeddings."""
    h, q, kv, i = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim, arch.intermediate
    out: list[Module] = []
    if arch.model_type in DECODER_TYPES:
        out.append(_embedding("model.embed_tokens", arch.vocab, h))
        qkv_bias = arch.attention_bias or arch.model_type == "qwen2"
        for n in range(arch.layers):
            p = f"model.layers.{n}"
            out += [_norm(f"{p}.input_layernorm", h, False, n),
                    _linear(f"{p}.self_attn.q_proj", h, q, qkv_bias, n),
                    _linear(f"{p}.self_attn.k_proj", h, kv, qkv_bias, n),
                    _linear(f"{p}.self_attn.v_proj", h, kv, qkv_bias, n),
                    _linear(f"{p}.self_attn.o_proj", q, h, arch.attention_bias, n),
                    _norm(f"{p}.post_attention_layernorm", h, False, n),
                    _linear(f"{p}.mlp.gate_proj", h, i, arch.mlp_bias, n),
                    _linear(f"{p}.mlp.up_proj", h, i, arch.mlp_bias, n),
                    _linear(f"{p}.mlp.down_proj", i, h, arch.mlp_bias, n)]
            if arch.model_type == "qwen3":
                out += [_norm(f"{p}.self_attn.q_norm", arch.head_dim, False, n),
                        _norm(f"{p}.self_attn.k_norm", arch.head_dim, False, n)]
        out.append(_norm("model.norm", h, False))
    elif arch.model_type == "gpt2":
        out += [_embedding("transformer.wte", arch.vocab, h), _embedding("transformer.wpe", arch.positions, h)]
        for n in range(arch.layers):
            p = f"transformer.h.{n}"
            out += [_norm(f"{p}.ln_1", h, True, n), _linear(f"{p}.attn.c_attn", h, 3 * h, True, n),
                    _linear(f"{p}.attn.c_proj", h, h, True, n), _norm(f"{p}.ln_2", h, True, n),
                    _linear(f"{p}.mlp.c_fc", h, i, True, n), _linear(f"{p}.mlp.c_proj", i, h, True, n)]
        out.append(_norm("transformer.ln_f", h, True))
    else:  # BERT-like encoders: the base model with its pooler
        b = arch.model_type.replace("xlm-", "")
        out += [_embedding(f"{b}.embeddings.word_embeddings", arch.vocab, h),
                _embedding(f"{b}.embeddings.position_embeddings", arch.positions, h)]
        if arch.token_types:
            out.append(_embedding(f"{b}.embeddings.token_type_embeddings", arch.token_types, h))
        out.append(_norm(f"{b}.embeddings.LayerNorm", h, True))
        for n in range(arch.layers):
            p = f"{b}.encoder.layer.{n}"
            out += [_linear(f"{p}.attention.self.{name}", h, h, True, n) for name in ("query", "key", "value")]
            out += [_linear(f"{p}.attention.output.dense", h, h, True, n),
                    _norm(f"{p}.attention.output.LayerNorm", h, True, n),
                    _linear(f"{p}.intermediate.dense", h, i, True, n), _linear(f"{p}.output.dense", i, h, True, n),
                    _norm(f"{p}.output.LayerNorm", h, True, n)]
        out.append(_linear(f"{b}.pooler.dense", h, h, True))
    if not arch.tied and arch.model_type not in ENCODER_TYPES:
        out.append(_linear("lm_head", h, arch.vocab, False))
    return out


def count_parameters(arch: Architecture) -> int:
    """Parameters of the model (a tied LM head counted once)."""
    return sum(m.params for m in module_table(arch))


def matches(target: str | list[str], name: str) -> bool:
    """PEFT's target rule: a string is a regex matched against the full name, a list entry
    matches a name or a name suffix after a dot."""
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in target)


def lora_targets(arch: Architecture, targets: str | list[str] | None) -> list[Module]:
    """The linear modules LoRA wraps: ``targets`` as the adapter section gives them (None: PEFT's
    default for the model type; ``all-linear``: every linear layer but the output layer)."""
    linear = [m for m in module_table(arch) if m.kind == "linear"]
    if targets is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        targets = list(defaults[arch.model_type])
    if targets == "all-linear":
        return [m for m in linear if m.name != "lm_head"]
    return [m for m in linear if matches(targets, m.name)]
