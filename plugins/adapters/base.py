"""The shared base of the PEFT adapters: resolve targets and head, wrap with PEFT, load."""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from tuneforge.adapters import Adapter, AdapterOptions
from tuneforge.errors import ConfigError, did_you_mean
from tuneforge.plugins.adapters.targets import (
    adaptable_modules,
    check_targets,
    default_modules_to_save,
    default_targets,
    module_patterns,
    skeleton_model,
)

log = logging.getLogger(__name__)


class TargetOptions(AdapterOptions):
    target_modules: list[str] | str | None = Field(
        None,
        description="Modules to adapt: a list of name suffixes, a regex, or 'all-linear'; "
        "null: the architecture's default (BERT query/value, T5 q/v, GPT-2 c_attn, Llama q_proj/v_proj).",
    )
    modules_to_save: list[str] | None = Field(
        None,
        description="Modules trained fully and saved with the adapter; null: the task head found in the model "
        "(e.g. classifier) plus any module whose weights the pretrained checkpoint lacks.",
    )



class PeftAdapter(Adapter):
    """Shared behaviour: resolve targets and head, wrap with PEFT, log, load saved adapters."""

    #: PEFT's per-architecture default target mapping for this method.
    default_mapping: ClassVar[str] = "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"

    def mapping(self) -> dict[str, list[str]]:
        from peft.utils import constants

        return dict(getattr(constants, self.default_mapping))

    def preflight(self) -> None:
        targets = getattr(self.options, "target_modules", None)
        if targets is None or isinstance(targets, str):
            return  # defaults are resolved on the real model; regexes depend on full names
        skeleton = skeleton_model(self.config)
        if skeleton is not None:  # typos now; names of the task head are checked on the real model
            check_targets(skeleton, targets, self.name, only_typos=True)

    def resolve(self, model: torch.nn.Module) -> tuple[list[str] | str, list[str] | None]:
        """(target_modules, modules_to_save) for ``model``, checked against its modules."""
        o = self.options
        targets = o.target_modules if o.target_modules is not None else default_targets(model, self.mapping(), self.name)
        check_targets(model, targets, self.name)
        heads = o.modules_to_save if o.modules_to_save is not None else default_modules_to_save(model)
        children = [n for n, _ in model.named_children()]
        names = [n for n, _ in model.named_modules()]
        for head in heads:
            if not any(n == head or n.endswith(f".{head}") for n in names):
                raise ConfigError(
                    f"adapter '{self.name}': adapter.modules_to_save entry '{head}' is no module of "
                    f"{type(model).__name__}{did_you_mean(head, children)}; top-level modules: {', '.join(children)}"
                )
        return targets, heads or None

    @abstractmethod
    def peft_config(self, model: torch.nn.Module) -> Any:
        """The PEFT config object for ``model`` (targets and head resolved)."""

    def apply(self, model: torch.nn.Module, task: Any) -> torch.nn.Module:
        from peft import get_peft_model

        peft_config = self.peft_config(model)
        if self.config.distributed.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # type: ignore[operator]  # frozen embeddings: checkpointed blocks still need grads
        try:
            wrapped = get_peft_model(model, peft_config)
        except ValueError as exc:  # PEFT's own target/config checks
            names = module_patterns(list(adaptable_modules(model)))
            raise ConfigError(f"adapter '{self.name}': {exc}; available modules: {', '.join(names)}") from None
        targets = getattr(peft_config, "target_modules", None)
        log.info("adapter %s: targets %s, fully trained %s", self.name, _show(targets),
                 _show(getattr(peft_config, "modules_to_save", None)))
        return wrapped

    def load(self, model: torch.nn.Module, directory: str | Path, task: Any) -> torch.nn.Module:
        from peft import PeftModel

        if not Path(directory, "adapter_config.json").is_file():
            raise ConfigError(f"'{directory}' holds no saved adapter (adapter_config.json is missing)")
        return PeftModel.from_pretrained(model, str(directory), is_trainable=False)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    return value if isinstance(value, str) else ", ".join(sorted(value))

