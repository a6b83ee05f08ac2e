"""Parameter-efficient fine-tuning through PEFT: ``lora``, ``dora``, ``ia3``, ``qlora``
and ``peft`` (any other PEFT method by name).

Every hyperparameter is an ordinary key of the ``adapter:`` section, so
``adapter.r=16`` works as an override and a search can tune it::

    adapter:
      type: lora
      r: 8                 # rank
      alpha: 16            # scaling = alpha / r
      dropout: 0.05
      target_modules: null # null: the architecture's default (BERT query/value, GPT-2 c_attn, ...)
      modules_to_save: null  # null: the task head found in the model (e.g. BERT's classifier)

Targets are checked against the model before training; one that matches nothing is a
``ConfigError`` listing the module names that exist. Only the adapter (and the task
head) is exported, as ``adapter_model.safetensors`` (PEFT format).

* :mod:`.targets` which modules an adapter wraps and which it trains fully
* :mod:`.base` the shared PEFT adapter (targets, head, wrap, load)
* :mod:`.lora` ``lora``, ``dora`` and ``ia3``
* :mod:`.qlora` ``qlora`` (a bitsandbytes-quantised base)
* :mod:`.passthrough` ``peft``: any other PEFT method by name
"""

from __future__ import annotations

from typing import Any

from tuneforge import hookimpl
from tuneforge.plugins.adapters.base import PeftAdapter, TargetOptions
from tuneforge.plugins.adapters.lora import DoraAdapter, IA3Adapter, IA3Options, LoraAdapter, LoraOptions
from tuneforge.plugins.adapters.passthrough import NEEDS_LOOP_SUPPORT, PeftPassthrough, PeftPassthroughOptions
from tuneforge.plugins.adapters.qlora import QLORA_SKIP_MODULES, QLoraAdapter, QLoraOptions
from tuneforge.plugins.adapters.targets import (
    FALLBACK_TARGETS,
    adaptable_modules,
    check_targets,
    checkpoint_keys,
    default_modules_to_save,
    default_targets,
    model_type,
    module_patterns,
    newly_initialized_modules,
    output_embeddings,
    skeleton_model,
    target_matches,
    task_head_modules,
    unmatched_targets,
)

__all__ = [
    "FALLBACK_TARGETS", "NEEDS_LOOP_SUPPORT", "QLORA_SKIP_MODULES", "DoraAdapter", "IA3Adapter", "IA3Options",
    "LoraAdapter", "LoraOptions", "PeftAdapter", "PeftPassthrough", "PeftPassthroughOptions", "QLoraAdapter",
    "QLoraOptions", "TargetOptions", "adaptable_modules", "check_targets", "checkpoint_keys",
    "default_modules_to_save", "default_targets", "model_type", "module_patterns", "newly_initialized_modules",
    "output_embeddings", "skeleton_model", "target_matches", "task_head_modules", "unmatched_targets",
]


@hookimpl
def tf_register_adapters(register: Any) -> None:
    for cls in (LoraAdapter, DoraAdapter, IA3Adapter, QLoraAdapter, PeftPassthrough):
        register(cls.name, cls)
