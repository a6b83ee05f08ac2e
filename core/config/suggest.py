"""What a user is told about a key that is not in the schema: which keys are valid there, and
the key they probably meant (a near-miss, another trainer's name, or the same key elsewhere)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from tuneforge.config.schema import RunConfig
from tuneforge.errors import did_you_mean


def config_key_problem(dotted: str) -> str | None:
    """Why ``dotted`` is not a settable key of :class:`RunConfig` (with a did-you-mean), or None.

    Keys under the open ``task``/``adapter`` sections and under dict fields
    (``model.config_overrides.*``) are accepted here; plugins validate them later.
    """
    parts = dotted.split(".")
    if any(not p for p in parts):
        return f"'{dotted}' is not a dotted config key (e.g. training.lr)"
    if parts[0] in ("search", "meta"):
        return f"'{dotted}': the {parts[0]} section itself cannot be searched"
    current: Any = RunConfig
    for i, part in enumerate(parts):
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            if getattr(current, "model_config", {}).get("extra") == "allow":
                return None  # a plugin's option (task:/adapter:); its Options model checks it
            where = ".".join(parts[:i])
            full = {".".join([*parts[:i], f]): f for f in fields}
            hint = did_you_mean(".".join(parts[: i + 1]), full)
            return (f"unknown config key '{dotted}'{hint}; "
                    f"valid keys in {where or 'the top level'}: {', '.join(fields)}")
        annotation = fields[part].annotation
        sub = _model_in(annotation)
        if sub is None:
            if i == len(parts) - 1:
                return None
            if "dict" in str(annotation):
                return None  # e.g. model.config_overrides.hidden_dropout_prob
            return f"'{dotted}': '{'.'.join(parts[: i + 1])}' is a value, not a section"
        current = sub
    return f"'{dotted}' is a whole section; search one of its keys ({', '.join(current.model_fields)})"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (sub)model found by walking ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# What the HF Trainer (TrainingArguments), Axolotl and LLaMA-Factory call keys that exist here under
# another name: a user coming from them gets the tuneforge key, not a near-miss spelling.
OTHER_TRAINERS_NAMES: dict[str, str] = {
    "learning_rate": "training.lr",
    "num_train_epochs": "training.epochs",
    "num_epochs": "training.epochs",
    "per_device_train_batch_size": "training.batch_size",
    "train_batch_size": "training.batch_size",
    "micro_batch_size": "training.batch_size",
    "per_device_eval_batch_size": "training.eval_batch_size",
    "lr_scheduler_type": "training.scheduler",
    "lr_scheduler": "training.scheduler",
    "adam_beta1": "training.betas",
    "adam_beta2": "training.betas",
    "adam_epsilon": "training.eps",
    "bf16": "training.mixed_precision",
    "fp16": "training.mixed_precision",
    "logging_steps": "training.log_every_n_steps",
    "dataloader_num_workers": "training.num_workers",
    "eval_steps": "evaluation.every_n_steps",
    "eval_strategy": "evaluation.strategy",
    "evaluation_strategy": "evaluation.strategy",
    "metric_for_best_model": "evaluation.metric",
    "output_dir": "output.dir",
    "overwrite_output_dir": "output.overwrite",
    "save_steps": "output.save_every_n_steps",
    "save_total_limit": "output.keep_last",
    "load_best_model_at_end": "output.save_best",
    "resume_from_checkpoint": "resume",
    "model_name_or_path": "model.name_or_path",
    "base_model": "model.name_or_path",
    "max_seq_length": "data.max_length",
    "sequence_len": "data.max_length",
    "cutoff_len": "data.max_length",
    "deepspeed": "distributed.deepspeed_config",
    "report_to": "trackers",
    "lora_r": "adapter.r",
    "lora_alpha": "adapter.alpha",
    "lora_dropout": "adapter.dropout",
    "lora_target_modules": "adapter.target_modules",
    "lora_target": "adapter.target_modules",
}


def suggest_key(path: str, key: str, siblings: list[str]) -> str:
    """The hint of an unknown key: another trainer's name for a tuneforge key, a near-miss of a
    key valid here, or the same key in another section (``evaluation.seed`` -> ``training.seed``)."""
    alias = OTHER_TRAINERS_NAMES.get(key)
    if alias and alias != path:
        return f" (did you mean '{alias}'? '{key}' is another trainer's name for it)"
    hint = did_you_mean(key, siblings)
    if hint:
        return hint
    for section in RunConfig.model_fields:
        if key in _fields_at(RunConfig, (section,)) and f"{section}.{key}" != path:
            return f" (did you mean '{section}.{key}'?)"
    return ""


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = prefix + ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            siblings = _fields_at(model, loc[:-1])
            valid = f"; valid keys here: {', '.join(siblings)}" if siblings else ""
            lines.append(f"{source}: unknown key '{path}'{suggest_key(path, key, siblings)}{valid}")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing required key '{path}'")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            where = f"'{path}'" if path else "config"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {where}: {msg}{shown}")
    return "\n".join(lines)
