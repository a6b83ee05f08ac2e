"""Which modules of a model an adapter wraps, and which it trains fully.

Targets (``adapter.target_modules``) are checked against the model's adaptable
modules (linear, Conv1D, embedding, convolution layers); the modules trained fully
and saved with the adapter default to the task head plus any module whose weights
the pretrained checkpoint lacks.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from tuneforge.errors import ConfigError, did_you_mean
from tuneforge.hub import resolve_pretrained

log = logging.getLogger(__name__)

#: Last names of attention projections used when PEFT knows no default for a model type.
FALLBACK_TARGETS = ("q_proj", "v_proj", "query", "value", "q", "v", "c_attn", "query_key_value", "Wqkv", "qkv_proj")


def adaptable_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Modules PEFT can wrap (linear, GPT-2 style Conv1D, embeddings, convolutions) by full name."""
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, Conv1D, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    return {name: m for name, m in model.named_modules() if name and isinstance(m, kinds)}


def module_patterns(names: list[str]) -> list[str]:
    """Short, valid target names: the part after the last layer index (``attention.self.query``)."""
    out: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        idx = max((i for i, p in enumerate(parts) if p.isdigit()), default=-1)
        out[".".join(parts[idx + 1 :])] = None
    return list(out)


def target_matches(target: str | list[str], name: str) -> bool:
    """PEFT's rule: a string is a regex (full match), a list entry matches a name suffix."""
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in target)


def unmatched_targets(model: torch.nn.Module, targets: str | list[str]) -> list[str]:
    """The targets that match no adaptable module of ``model``."""
    names = list(adaptable_modules(model))
    if targets == "all-linear":
        return []
    if isinstance(targets, str):
        return [] if any(target_matches(targets, n) for n in names) else [targets]
    return [t for t in targets if not any(target_matches([t], n) for n in names)]


def check_targets(
    model: torch.nn.Module, targets: str | list[str], adapter: str, key: str = "target_modules",
    only_typos: bool = False,
) -> None:
    """Raise ``ConfigError`` if a target matches no adaptable module, listing the ones that exist.

    ``only_typos``: raise only for targets close to an existing name (the headless skeleton
    of preflight lacks the task head, so ``classifier`` or ``lm_head`` are checked later)."""
    available = module_patterns(list(adaptable_modules(model)))
    missing = unmatched_targets(model, targets)
    if only_typos:
        missing = [t for t in missing if did_you_mean(t.split(".")[-1], [p.split(".")[-1] for p in available])]
    if missing:
        hint = did_you_mean(missing[0].split(".")[-1], [p.split(".")[-1] for p in available])
        raise ConfigError(
            f"adapter '{adapter}': adapter.{key} {missing} match no module of this "
            f"{type(model).__name__}{hint}; available: {', '.join(available)}"
        )


def output_embeddings(model: torch.nn.Module) -> torch.nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def task_head_modules(model: torch.nn.Module) -> list[str]:
    """Top-level modules outside the pretrained base (e.g. ``classifier``, ``score``, ``qa_outputs``).

    Output embeddings (an LM head tied to the input embeddings) are pretrained, not a new head.
    """
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if not isinstance(base, torch.nn.Module) or base is model:
        return []
    out_emb = output_embeddings(model)
    heads = []
    for name, child in model.named_children():
        if child is base or not any(True for _ in child.parameters()):
            continue
        if out_emb is not None and any(m is out_emb for m in child.modules()):
            continue
        heads.append(name)
    return heads


def checkpoint_keys(directory: Path) -> set[str] | None:
    """Tensor names stored in a local safetensors checkpoint (read from headers only)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    single = directory / "model.safetensors"
    if not single.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        return set(f.keys())


def newly_initialized_modules(model: torch.nn.Module) -> list[str]:
    """Modules whose weights are not in the pretrained checkpoint ``model`` was loaded from.

    They are random: frozen, they would be lost from an adapter-only export (a reload
    draws other random values), so they are trained and saved with the adapter. A model
    assembled from pretrained parts (an ``EncoderDecoderModel`` warm-started from two
    encoders: its cross-attention is new) is inspected part by part.
    """
    name = str(getattr(model, "name_or_path", "") or "")
    if not name:
        from transformers import PreTrainedModel

        return [f"{part}.{module}" for part, child in model.named_children()
                if isinstance(child, PreTrainedModel) and child.name_or_path
                for module in newly_initialized_modules(child)]
    path = Path(name)
    keys = checkpoint_keys(path) if path.is_dir() else None
    if not keys:
        return []
    prefix = getattr(model, "base_model_prefix", "")

    def saved(name: str) -> bool:
        return name in keys or (bool(prefix) and (name.removeprefix(f"{prefix}.") in keys or f"{prefix}.{name}" in keys))

    params = dict(model.named_parameters())
    missing = [n for n in params if not saved(n)]
    if sum(params[n].numel() for n in missing) > 0.5 * sum(p.numel() for p in params.values()):
        log.debug("checkpoint %s names its tensors differently; not looking for new weights", path)
        return []
    return _new_ancestors(model, set(missing))


def _new_ancestors(model: torch.nn.Module, new_params: set[str]) -> list[str]:
    """The fewest modules covering ``new_params``: each the outermost module all of whose
    parameters are new (a whole ``crossattention`` block, not its six layers), never one that
    holds the (tied, pretrained) output embeddings."""
    out_emb = output_embeddings(model)
    found: list[str] = []

    def visit(prefix: str, module: torch.nn.Module) -> None:
        names = [f"{prefix}{n}" for n, _ in module.named_parameters()]
        if not names or not any(n in new_params for n in names):
            return
        holds_embeddings = out_emb is not None and any(m is out_emb for m in module.modules())
        if prefix and not holds_embeddings and all(n in new_params for n in names):
            found.append(prefix.rstrip("."))
            return
        own = [f"{prefix}{n}" for n, _ in module.named_parameters(recurse=False) if f"{prefix}{n}" in new_params]
        if own:  # e.g. an LM head's zero-initialised bias beside the tied embeddings: not worth a copy of them
            log.debug("new parameters left frozen (their module holds pretrained weights): %s", ", ".join(own))
        for name, child in module.named_children():
            visit(f"{prefix}{name}.", child)

    visit("", model)
    return found


def default_modules_to_save(model: torch.nn.Module) -> list[str]:
    """The task head plus any other module whose weights the pretrained checkpoint lacks."""
    heads = task_head_modules(model)
    extra = [m for m in newly_initialized_modules(model) if not any(m == h or m.startswith(f"{h}.") for h in heads)]
    if extra:
        log.info("not in the pretrained checkpoint, so trained and saved with the adapter: %s", ", ".join(extra))
    return heads + extra


def model_type(model: torch.nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def default_targets(model: torch.nn.Module, mapping: dict[str, list[str]], adapter: str) -> list[str]:
    """PEFT's default targets for the architecture, else attention projections found by name."""
    kind = model_type(model)
    if kind in mapping:
        return list(mapping[kind])
    names = list(adaptable_modules(model))
    found = [t for t in FALLBACK_TARGETS if any(n.split(".")[-1] == t for n in names)]
    if not found:
        raise ConfigError(
            f"adapter '{adapter}': no default target modules for model type '{kind}'; set adapter.target_modules "
            f"to some of: {', '.join(module_patterns(names))}"
        )
    return found


def skeleton_model(config: Any) -> torch.nn.Module | None:
    """The base model built on the meta device (no weights) from a local model dir, for cheap checks."""
    path = Path(resolve_pretrained(config.model.name_or_path))
    if not (path / "config.json").is_file() or config.model.trust_remote_code:
        return None
    try:
        from transformers import AutoConfig, AutoModel

        model_config = AutoConfig.from_pretrained(str(path))
        with torch.device("meta"):
            return AutoModel.from_config(model_config)
    except Exception as exc:  # an unusual model: checked again on the real model in apply()
        log.debug("skeleton of %s not built: %s", path, exc)
        return None

