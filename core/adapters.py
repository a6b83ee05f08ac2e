"""The adapter interface: parameter-efficient fine-tuning methods as plugins.

An adapter plugin registers a subclass of :class:`Adapter` under a name that the
config's ``adapter.type`` selects. Its ``Options`` model validates the rest of the
``adapter:`` section, so every adapter hyperparameter is an ordinary (searchable)
config key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel

from tuneforge.config import RunConfig, Section, validate_options

if TYPE_CHECKING:
    from tuneforge.tasks import Task


class AdapterOptions(Section):
    """Options of an adapter with none of its own."""


class Adapter(ABC):
    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = AdapterOptions

    def __init__(self, options: BaseModel, config: RunConfig) -> None:
        self.options = options
        self.config = config

    @classmethod
    def parse_options(cls, raw: dict[str, Any], source: str = "config") -> BaseModel:
        return validate_options(cls.Options, raw, source, "adapter.")

    def preflight(self) -> None:  # noqa: B027 - optional hook
        """Check requirements (packages, GPU) before any heavy work; raise ConfigError."""

    def model_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` keyword arguments for the base model the task builds, e.g.
        QLoRA's ``quantization_config``: the model is loaded that way once, never at full precision first."""
        return {}

    @abstractmethod
    def apply(self, model: torch.nn.Module, task: Task) -> torch.nn.Module:
        """Return ``model`` with the adapter inserted and only adapter (+head) params trainable."""

    def load(self, model: torch.nn.Module, directory: str | Path, task: Task) -> torch.nn.Module:
        """Return ``model`` (a freshly built base model) with saved adapter weights from ``directory``."""
        raise NotImplementedError(f"adapter '{self.name}' cannot load saved adapters")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as the values they hold."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":  # bitsandbytes packs two 4-bit values per storage byte
            n *= 2 * getattr(getattr(p, "quant_storage", None), "itemsize", 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def describe_parameters(model: torch.nn.Module) -> str:
    """``"trainable 1,234 of 22,713,216 parameters (0.0054%)"``."""
    trainable, total = count_parameters(model)
    return f"trainable {trainable:,} of {total:,} parameters ({100.0 * trainable / max(total, 1):.4f}%)"
