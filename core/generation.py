"""Helpers for tasks that generate text during evaluation (also importable from
:mod:`tuneforge.tasks`): ``generate`` on the bare model, safe under several processes; left
padding of prompts; decoding generated ids."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tuneforge import distributed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase



def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP / DeepSpeed-engine / ``torch.compile`` wrappers.

    ``generate`` is a method of the Hugging Face model, not of its wrappers, so an
    ``evaluation_step`` that generates calls it on ``unwrap_model(model)``.
    """
    return distributed.unwrap(model)


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True if ``flag`` is true on any rank (every rank must call this together)."""
    return distributed.any_rank(flag, device)


def generate(model: torch.nn.Module, **kwargs: Any) -> torch.Tensor:
    """``model.generate(**kwargs)`` on the unwrapped model, safe under several processes.

    With more than one process ``synced_gpus=True`` keeps ranks stepping together until
    all have finished (needed by ZeRO-3, whose forward passes gather sharded weights), so
    every rank must call this the same number of times per evaluation: generate on every
    evaluation batch, or decide with :func:`any_rank`.
    """
    bare = unwrap_model(model)
    if distributed.world_size() > 1:
        kwargs.setdefault("synced_gpus", True)
    with torch.no_grad():
        out = bare.generate(**kwargs)  # type: ignore[operator]
    return out if isinstance(out, torch.Tensor) else out.sequences


def left_pad(sequences: list[torch.Tensor], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-d id tensors (decoder-only ``generate`` continues from the right end);
    returns ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in sequences)
    device = sequences[0].device
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s):] = s
            mask[i, width - len(s):] = 1
    return ids, mask


def decode_ids(tokenizer: PreTrainedTokenizerBase, ids: Any) -> str:
    """Decode one row of generated ids, dropping -100 padding and special tokens."""
    text = tokenizer.decode([int(t) for t in ids if int(t) >= 0], skip_special_tokens=True)
    return str(text).strip()
