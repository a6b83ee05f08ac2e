"""LoRA, DoRA and (IA)^3: PEFT methods with per-architecture default targets."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from tuneforge.errors import ConfigError
from tuneforge.plugins.adapters.base import PeftAdapter, TargetOptions
from tuneforge.plugins.adapters.targets import model_type


class LoraOptions(TargetOptions):
    r: int = Field(8, ge=1, le=4096, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases are trained.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")


class IA3Options(TargetOptions):
    feedforward_modules: list[str] | None = Field(
        None, description="Targets treated as feed-forward (scaled on their input); null: the architecture's default."
    )



class LoraAdapter(PeftAdapter):
    """LoRA: low-rank updates ``B @ A`` added to the target layers."""

    name = "lora"
    Options = LoraOptions
    use_dora: ClassVar[bool] = False

    def lora_kwargs(self, model: torch.nn.Module) -> dict[str, Any]:
        o = self.options
        targets, heads = self.resolve(model)
        return {
            "r": o.r, "lora_alpha": o.alpha, "lora_dropout": o.dropout, "bias": o.bias, "use_rslora": o.use_rslora,
            "target_modules": targets, "modules_to_save": heads, "use_dora": self.use_dora,
        }

    def peft_config(self, model: torch.nn.Module) -> Any:
        from peft import LoraConfig

        return LoraConfig(**self.lora_kwargs(model))


class DoraAdapter(LoraAdapter):
    """DoRA: LoRA on the direction of each weight plus a trained magnitude vector."""

    name = "dora"
    use_dora = True


class IA3Adapter(PeftAdapter):
    """(IA)^3: learned vectors rescaling attention keys/values and feed-forward activations."""

    name = "ia3"
    Options = IA3Options
    default_mapping = "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING"

    def peft_config(self, model: torch.nn.Module) -> Any:
        from peft import IA3Config
        from peft.utils import constants

        targets, heads = self.resolve(model)
        ff = self.options.feedforward_modules
        if ff is None:
            ff_map = constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
            ff = list(ff_map.get(model_type(model) or "", [])) if self.options.target_modules is None else []
        if isinstance(targets, list):
            extra = [m for m in ff if m not in targets]
            if extra:
                raise ConfigError(f"adapter 'ia3': adapter.feedforward_modules {extra} must also be in adapter.target_modules")
        return IA3Config(target_modules=targets, feedforward_modules=ff, modules_to_save=heads)

