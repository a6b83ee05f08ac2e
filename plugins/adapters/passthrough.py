"""Any other PEFT method by name (``adapter.type: peft``, ``adapter.method: loha``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from pydantic import Field

from tuneforge.adapters import AdapterOptions
from tuneforge.errors import ConfigError, did_you_mean
from tuneforge.plugins.adapters.base import PeftAdapter
from tuneforge.plugins.adapters.targets import check_targets, default_modules_to_save, skeleton_model

#: PEFT methods that need the training loop's cooperation (not supported by pass-through).
NEEDS_LOOP_SUPPORT = {"ADALORA": "it must call update_and_allocate() every step", "XLORA": "it needs a classifier warm-up"}


class PeftPassthroughOptions(AdapterOptions):
    method: str = Field(description="PEFT method (PeftType name, case-insensitive): loha, lokr, vera, oft, boft, ...")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Fields of that method's PEFT config class.")


class PeftPassthrough(PeftAdapter):
    """Any PEFT method by name, its config fields given as ``adapter.kwargs``.

    ``target_modules`` and ``modules_to_save`` get the same defaults and checks as ``lora``
    when the method has them and ``kwargs`` leaves them out.
    """

    name = "peft"
    Options = PeftPassthroughOptions

    def config_class(self) -> Any:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        by_name = {str(getattr(k, "value", k)).upper(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
        by_class = {v.__name__.upper(): k for k, v in by_name.items()}
        wanted = self.options.method.upper().replace("-", "_")
        wanted = by_class.get(wanted, wanted)
        if wanted in NEEDS_LOOP_SUPPORT:
            raise ConfigError(f"adapter 'peft': method '{self.options.method}' is not supported: {NEEDS_LOOP_SUPPORT[wanted]}")
        if wanted not in by_name:
            names = sorted(n.lower() for n in by_name if n not in NEEDS_LOOP_SUPPORT)
            raise ConfigError(
                f"adapter 'peft': unknown adapter.method '{self.options.method}'"
                f"{did_you_mean(self.options.method.lower(), names)}; PEFT {_peft_version()} offers: {', '.join(names)}"
            )
        return by_name[wanted]

    def build_config(self, **extra: Any) -> Any:
        cls = self.config_class()
        fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("peft_type", "peft_version", "auto_mapping")]
        kwargs = {**self.options.kwargs, **extra}
        for key in kwargs:
            if key not in fields:
                raise ConfigError(
                    f"adapter 'peft': unknown key 'adapter.kwargs.{key}' for {cls.__name__}{did_you_mean(key, fields)}; "
                    f"valid keys: {', '.join(fields)}"
                )
        try:
            config = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"adapter 'peft': invalid {cls.__name__}({kwargs}): {exc}") from None
        if config.is_prompt_learning and config.task_type is None:
            from peft import TaskType

            raise ConfigError(
                f"adapter 'peft': {cls.__name__} is a prompt-learning method and needs adapter.kwargs.task_type, "
                f"one of {', '.join(TaskType.__members__)}"
            )
        return config

    def preflight(self) -> None:
        self.build_config()
        targets = self.options.kwargs.get("target_modules")
        if isinstance(targets, list):
            skeleton = skeleton_model(self.config)
            if skeleton is not None:
                check_targets(skeleton, targets, self.name, "kwargs.target_modules")

    def peft_config(self, model: torch.nn.Module) -> Any:
        """Targets left out get PEFT's per-architecture default; the task head is saved unless set."""
        config = self.build_config()
        targets = getattr(config, "target_modules", None)
        if targets is not None:
            check_targets(model, sorted(targets) if isinstance(targets, set) else targets, self.name,
                          "kwargs.target_modules")
        if hasattr(config, "modules_to_save") and "modules_to_save" not in self.options.kwargs:
            heads = default_modules_to_save(model)
            if heads:
                return self.build_config(modules_to_save=heads)
        return config


def _peft_version() -> str:
    import peft

    return str(peft.__version__)

