"""QLoRA: LoRA on a base model quantised to 4 or 8 bits by bitsandbytes."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from pydantic import Field

from tuneforge.errors import ConfigError
from tuneforge.plugins.adapters.lora import LoraAdapter, LoraOptions


class QLoraOptions(LoraOptions):
    bits: Literal[4, 8] = Field(4, description="Quantisation of the frozen base weights (bitsandbytes).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Also quantise the 4-bit quantisation constants.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the matmuls on dequantised 4-bit weights."
    )


#: Task heads (randomly initialised, trained fully) and output layers kept out of quantisation.
QLORA_SKIP_MODULES = ["classifier", "score", "qa_outputs", "pooler", "lm_head"]


class QLoraAdapter(LoraAdapter):
    """LoRA on a base model whose frozen weights are quantised to 4 or 8 bits (needs bitsandbytes + CUDA).

    ``model_kwargs`` makes the task load its base model quantised straight onto this
    process's GPU (``quantization_config``, ``device_map``), so neither the CPU nor the GPU
    ever holds the full-precision base weights; the task head and output layer stay in full
    precision. ``apply`` prepares the model for k-bit training and inserts LoRA. Saved
    adapters load onto a full-precision base (``load``), e.g. for merging.
    """

    name = "qlora"
    Options = QLoraOptions

    def preflight(self) -> None:
        import importlib.util

        problems = []
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append("the bitsandbytes package is not installed (pip install bitsandbytes)")
        if not torch.cuda.is_available():
            problems.append("no CUDA GPU is visible")
        if problems:
            raise ConfigError(
                f"adapter 'qlora' quantises the base model with bitsandbytes on a CUDA GPU, but {' and '.join(problems)}; "
                "use adapter.type=lora on this machine"
            )
        super().preflight()

    def quantization_config(self, skip: list[str]) -> Any:
        from transformers import BitsAndBytesConfig

        o = self.options
        if o.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=o.quant_type, bnb_4bit_use_double_quant=o.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, o.compute_dtype), llm_int8_skip_modules=skip,
        )

    def model_kwargs(self) -> dict[str, Any]:
        skip = list(dict.fromkeys([*(self.options.modules_to_save or []), *QLORA_SKIP_MODULES]))
        return {
            "quantization_config": self.quantization_config(skip),
            "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))},  # this rank's GPU
            "dtype": getattr(torch, self.options.compute_dtype),
        }

    def apply(self, model: torch.nn.Module, task: Any) -> torch.nn.Module:
        from peft import prepare_model_for_kbit_training

        if getattr(model, "hf_quantizer", None) is None:  # from_pretrained(quantization_config=...) sets it
            raise ConfigError(
                f"adapter 'qlora': task '{self.config.task.name}' built its model without the adapter's "
                "quantization_config (its build_model must pass self.pretrained_kwargs() to from_pretrained)"
            )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=self.config.distributed.gradient_checkpointing
        )
        return super().apply(model, task)

