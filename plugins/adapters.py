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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from tuneforge import hookimpl
from tuneforge.adapters import Adapter, AdapterOptions
from tuneforge.errors import ConfigError, did_you_mean
from tuneforge.hub import resolve_pretrained

log = logging.getLogger(__name__)

#: Last names of attention projections used when PEFT knows no default for a model type.
FALLBACK_TARGETS = ("q_proj", "v_proj", "query", "value", "q", "v", "c_attn", "query_key_value", "Wqkv", "qkv_proj")

#: PEFT methods that need the training loop's cooperation (not supported by pass-through).
NEEDS_LOOP_SUPPORT = {"ADALORA": "it must call update_and_allocate() every step", "XLORA": "it needs a classifier warm-up"}


# -- model inspection -------------------------------------------------------------------


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


# -- the adapters ------------------------------------------------------------------------


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


@hookimpl
def tf_register_adapters(register: Any) -> None:
    for cls in (LoraAdapter, DoraAdapter, IA3Adapter, QLoraAdapter, PeftPassthrough):
        register(cls.name, cls)
