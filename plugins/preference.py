"""Preference tuning: DPO, IPO, ORPO and SimPO on ``prompt``/``chosen``/``rejected`` pairs.

Records (jsonl/json), the TRL / UltraFeedback layouts::

    {"prompt": "Which intent? ...", "chosen": "card_arrival", "rejected": "card_delivery_estimate"}
    {"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}]}
    {"chosen": [{"role": "user", ...}, {"role": "assistant", ...}], "rejected": [<same user turn>, ...]}

A chat ``messages`` list may stand in for ``prompt``. Each side is rendered exactly as the
causal-LM task renders a prompt/response pair or a conversation (this task subclasses it); the
log-probability of a side is the sum over the tokens of its final reply. A batch of pairs is one
forward pass over ``[chosen_1..chosen_B, rejected_1..rejected_B]`` (as TRL), and one more for the
reference model when the loss needs one and its log-probs are not precomputed.

Losses (``task.loss``; ``docs/preference.md`` has the formulas, all checked against TRL 1.16):
``dpo`` (sigmoid, conservative ``label_smoothing``), ``ipo`` (per-token normalised, as TRL),
``orpo`` (NLL of chosen + odds-ratio term, no reference) and ``simpo`` (length-normalised margin
with ``simpo_gamma``, no reference).

With ``task.generation.scorers``, validation and test also generate a reply to each pair's prompt
(the causal-LM task's generation: the chosen side's prompt, left-padded, KV cache, greedy or beam)
and score it against the chosen reply, so a run can select on ROUGE or exact match.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from tuneforge import hookimpl
from tuneforge.data import pad_features, record_origin
from tuneforge.errors import ConfigError, DataError, TrainingError
from tuneforge.lm import next_token_logits, token_nll
from tuneforge.plugins.causal_lm import CausalLMOptions, CausalLMTask
from tuneforge.plugins.generation_scorers import all_metric_names
from tuneforge.tasks import unwrap_model
from tuneforge.text import IGNORE_INDEX

log = logging.getLogger(__name__)
REFERENCE_LOSSES = ("dpo", "ipo")
SIDES = ("chosen", "rejected")
REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")
REWARD_METRICS = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                  "chosen_logps", "rejected_logps")
GENERATION_KEYS = ("prompt_length", "sample")  # of the chosen side, batched when replies are scored


class PreferenceOptions(CausalLMOptions):
    loss: Literal["dpo", "ipo", "orpo", "simpo"] = Field(
        "dpo", description="dpo: sigmoid DPO; ipo: squared, per-token normalised; orpo: NLL of chosen + "
        "odds-ratio term; simpo: length-normalised margin. orpo and simpo need no reference model."
    )
    beta: float = Field(0.1, gt=0, description="dpo/simpo: scale of the implicit reward; ipo: tau, the target "
                        "margin is 1/(2 beta). Not used by orpo (see orpo_lambda).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="dpo/simpo: probability that a preference "
                                   "label is flipped (conservative DPO, cDPO); 0: plain sigmoid loss.")
    simpo_gamma: float = Field(0.5, ge=0.0, description="simpo: target reward margin gamma.")
    orpo_lambda: float = Field(0.1, gt=0, description="orpo: weight of the odds-ratio term next to the NLL of "
                               "the chosen reply.")
    orpo_nll_on_prompt: bool = Field(False, description="orpo: the NLL term also covers the prompt tokens of "
                                     "the chosen sequence (as TRL's ORPOTrainer); false: the reply only.")
    reference: Literal["auto", "adapter", "copy", "precomputed", "none"] = Field(
        "auto", description="Reference model of dpo/ipo. adapter: the policy with its (LoRA) adapter disabled, "
        "no second copy; copy: a frozen copy of the pretrained model, prepared like the policy (ZeRO-3 "
        "shards it); precomputed: reference log-probs computed once before training (adapter disabled, or "
        "the initial weights) and cached; auto: adapter with an adapter: section, else copy; none for "
        "orpo/simpo."
    )
    chosen_field: str = Field("chosen", description="Field of the preferred reply (string or message list).")
    rejected_field: str = Field("rejected", description="Field of the dispreferred reply (string or message list).")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable on both sides of ``-ln 2``."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def pair_losses(
    o: PreferenceOptions,
    logps: tuple[torch.Tensor, torch.Tensor],
    tokens: tuple[torch.Tensor, torch.Tensor],
    ref_logps: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss per pair, chosen reward, rejected reward)`` from summed reply log-probs
    ``logps = (chosen, rejected)``, reply lengths ``tokens`` and, for dpo/ipo, the reference's
    summed log-probs. ORPO's NLL term is not included (it needs the logits; see
    :meth:`PreferenceTask.pair_outputs`)."""
    (c, r), (nc, nr) = logps, (tokens[0].clamp(min=1), tokens[1].clamp(min=1))
    eps = o.label_smoothing
    if o.loss in REFERENCE_LOSSES:
        assert ref_logps is not None
        c_ratio, r_ratio = c - ref_logps[0], r - ref_logps[1]
        if o.loss == "dpo":
            z = o.beta * (c_ratio - r_ratio)
            losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        else:
            losses = (c_ratio / nc - r_ratio / nr - 1 / (2 * o.beta)) ** 2
        return losses, o.beta * c_ratio.detach(), o.beta * r_ratio.detach()
    c_avg, r_avg = c / nc, r / nr
    if o.loss == "simpo":
        z = o.beta * (c_avg - r_avg) - o.simpo_gamma
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        return losses, o.beta * c_avg.detach(), o.beta * r_avg.detach()
    c_avg, r_avg = c_avg.float(), r_avg.float()  # orpo
    log_odds = (c_avg - r_avg) - (log1mexp(c_avg) - log1mexp(r_avg))
    losses = -o.orpo_lambda * F.logsigmoid(log_odds)
    return losses, o.orpo_lambda * c_avg.detach(), o.orpo_lambda * r_avg.detach()


class PreferenceTask(CausalLMTask):
    """Preference optimisation of a causal LM on chosen/rejected reply pairs."""

    name = "preference"
    Options = PreferenceOptions
    primary_metric = "reward_accuracy"
    greater_is_better = True
    metric_names = (*REWARD_METRICS, "distinct_fraction", *all_metric_names())
    options: PreferenceOptions

    def __init__(self, options: Any, config: Any) -> None:
        super().__init__(options, config)
        o = options
        if o.packing:
            raise ConfigError("task.packing: the preference task keeps each chosen/rejected pair whole; set it false")
        if o.train_on_prompt:
            raise ConfigError("task.train_on_prompt: preference log-probs cover the replies only; for ORPO's NLL "
                              "over the prompt set task.orpo_nll_on_prompt: true")
        if o.label_smoothing and o.loss not in ("dpo", "simpo"):
            raise ConfigError(f"task.label_smoothing applies to loss dpo or simpo, not '{o.loss}'; remove it")
        if o.loss in REFERENCE_LOSSES:
            if o.reference == "none":
                raise ConfigError(f"task.reference=none: loss '{o.loss}' needs a reference model; use auto, adapter, "
                                  "copy or precomputed (or loss orpo/simpo)")
            if o.reference == "adapter" and config.adapter is None:
                raise ConfigError("task.reference=adapter needs an adapter: section (e.g. type: lora) whose disabled "
                                  "adapter gives the reference; add one, or use reference: copy")
        elif o.reference not in ("auto", "none"):
            raise ConfigError(f"task.reference={o.reference}: loss '{o.loss}' uses no reference model; "
                              "remove task.reference")
        self.reference_mode = self._resolve_reference(config)
        self.reference_model: torch.nn.Module | None = None
        m = config.model
        #: The pretrained model a frozen reference loads outside ``tuneforge train``; kept in the
        #: task state, since a reloaded full fine-tune's ``model.name_or_path`` is the trained model.
        self.reference_source: dict[str, Any] | None = (
            {"name_or_path": m.name_or_path, "revision": m.revision, "gguf_file": m.gguf_file}
            if self.copies_reference else None)
        self._set_up = False  # Task.setup ran (tuneforge train), so the reference is placed already
        self.autocast: Any = nullcontext
        self.features: dict[str, list[dict[str, Any]]] = {}

    def _resolve_reference(self, config: Any) -> str:
        o = self.options
        if o.loss not in REFERENCE_LOSSES:
            return "none"
        if o.reference == "auto":
            return "adapter" if config.adapter is not None else "copy"
        return str(o.reference)

    @property
    def copies_reference(self) -> bool:
        """The reference is a model of its own: the frozen copy, or the initial weights of a
        precomputed full fine-tune (with an adapter it is the disabled adapter)."""
        return self.reference_mode == "copy" or (self.reference_mode == "precomputed" and self.config.adapter is None)

    def prepare(self, train_records: list[dict[str, Any]]) -> None:
        """Nothing to learn; the fields are checked record by record in :meth:`encode`."""

    def state_dict(self) -> dict[str, Any]:
        return {"reference_model": self.reference_source} if self.reference_source is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.copies_reference:  # a state without it: only an adapter run's config still names the base model
            fallback = self.reference_source if self.config.adapter is not None else None
            self.reference_source = state.get("reference_model", fallback)

    # -- features ---------------------------------------------------------------------

    def _side_record(self, record: dict[str, Any], side: str, where: str) -> dict[str, Any]:
        """The causal-LM record (prompt/response or ``messages``) of one side of a pair."""
        o = self.options
        field = o.chosen_field if side == "chosen" else o.rejected_field
        reply = record.get(field)
        prompt = record.get(o.prompt_field, record.get(o.messages_field))
        if isinstance(reply, str):
            if not reply.strip():
                raise DataError(f"{where}: field '{field}' is empty")
            if isinstance(prompt, str) and o.input_format != "chat":
                return {o.prompt_field: prompt, o.response_field: reply}
            turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            if not isinstance(turns, list):
                raise DataError(f"{where}: a string '{field}' needs a '{o.prompt_field}' (string or message list) "
                                f"or '{o.messages_field}' field")
            return {o.messages_field: [*turns, {"role": "assistant", "content": reply}]}
        if not isinstance(reply, list) or not reply:
            have = ", ".join(sorted(record)) or "none"
            raise DataError(f"{where}: field '{field}' must be a string or a non-empty list of {{role, content}} "
                            f"messages (fields present: {have})")
        if o.input_format == "prompt_response":
            raise DataError(f"{where}: field '{field}' is a message list; set task.input_format to auto or chat")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if prompt is None or reply[: len(prompt)] == prompt:  # implicit prompt, or the reply repeats it
            return {o.messages_field: reply}
        if not isinstance(prompt, list):
            raise DataError(f"{where}: field '{o.prompt_field}' must be a string or a list of messages")
        return {o.messages_field: [*prompt, *reply]}

    def encode_side(self, record: dict[str, Any], side: str, tokenizer: Any, where: str) -> tuple[list[int], list[int], int]:
        """``(input_ids, labels, prompt_length)`` of one side; labels cover the final reply only,
        ``prompt_length`` tokens precede it (what generation continues)."""
        ids, labels, prompt_length = self.encode_record(self._side_record(record, side, where), tokenizer,
                                                        f"{where} ({side})")
        # Earlier assistant turns of a conversation are context: keep the last labelled run only.
        last = len(labels)
        while last and labels[last - 1] == IGNORE_INDEX:
            last -= 1
        first = last
        while first and labels[first - 1] != IGNORE_INDEX:
            first -= 1
        kept = [IGNORE_INDEX] * first + labels[first:last] + [IGNORE_INDEX] * (len(labels) - last)
        return ids, kept, prompt_length

    def pair_references(self, record: dict[str, Any], where: str) -> list[str]:
        """What a reply generated for the pair's prompt is scored against: the chosen reply, or
        ``task.generation.references_field`` of the record."""
        source = record if self.options.generation.references_field else self._side_record(record, "chosen", where)
        return self.references(source, where)

    def encode(self, records: list[dict[str, Any]], tokenizer: Any, split: str) -> list[dict[str, Any]]:
        self.tokenizer = tokenizer
        source = getattr(self.config.data, split, None) or f"{split} split"
        max_length = self.config.data.max_length
        features, truncated, empty = [], 0, 0
        scored = split != "train" and self.scoring  # generate a reply to every prompt and score it
        for i, rec in enumerate(records):
            where = record_origin(rec, source, i)
            feat: dict[str, Any] = {}
            for side in SIDES:
                ids, labels, prompt_length = self.encode_side(rec, side, tokenizer, where)
                if len(ids) > max_length:
                    truncated += 1
                    ids, labels = ids[:max_length], labels[:max_length]
                feat[f"{side}_input_ids"], feat[f"{side}_labels"] = ids, labels
                if scored and side == "chosen":
                    feat.update(prompt_length=min(prompt_length, len(ids)), sample=1,
                                references=self.pair_references(rec, where))
            if any(all(t == IGNORE_INDEX for t in feat[f"{s}_labels"][1:]) for s in SIDES):
                empty += 1
                if split == "train":
                    continue
            features.append(feat)
        if truncated:
            log.info("%s: %d sequences of %d pairs truncated to %d tokens", split, truncated, len(records), max_length)
        if empty:
            action = "dropped from training" if split == "train" else "kept"
            log.warning("%s: %d of %d pairs have a side without reply tokens within data.max_length=%d (%s)",
                        split, empty, len(records), max_length, action)
        if split == "train" and not features:
            raise DataError(f"{source}: no training pair has reply tokens on both sides within "
                            f"data.max_length={max_length}")
        self.features[split] = features
        return features

    def feature_length(self, feature: dict[str, Any]) -> int:
        return max(len(feature["chosen_input_ids"]), len(feature["rejected_input_ids"]))

    def collate(self, features: list[dict[str, Any]], tokenizer: Any) -> dict[str, torch.Tensor]:
        """One batch of ``2B`` rows: the chosen sequences, then the rejected ones; cached
        reference log-probs ride along as ``ref_chosen_logps``/``ref_rejected_logps``, and the
        chosen side's ``prompt_length``/``sample`` when replies are generated."""
        rows = [{"input_ids": f[f"{side}_input_ids"], "attention_mask": [1] * len(f[f"{side}_input_ids"]),
                 "labels": f[f"{side}_labels"]} for side in SIDES for f in features]
        batch = pad_features(rows, pad_token_id=tokenizer.pad_token_id)
        for key in REF_KEYS:
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float32)
        for key in GENERATION_KEYS:
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
        return batch

    # -- the reference model -------------------------------------------------------------

    def setup(self, runtime: Any, model: torch.nn.Module) -> None:
        """Resolve the reference: check the adapter can be disabled, prepare a frozen copy
        (``runtime.prepare_frozen``), or precompute and cache the reference log-probs of
        every split (same forward passes on every rank)."""
        self.autocast, self._set_up = runtime.autocast, True
        if self.reference_mode == "none":
            return
        adapted = self.config.adapter is not None and self.reference_mode in ("adapter", "precomputed")
        if adapted and not hasattr(unwrap_model(model), "disable_adapter"):
            raise ConfigError(f"task.reference={self.options.reference}: adapter "
                              f"'{self.config.adapter.type}' cannot be disabled to give the reference; "
                              "use reference: copy")
        if self.reference_mode == "copy":
            self.reference_model = runtime.prepare_frozen(self.build_model(self.tokenizer))
        elif self.reference_mode == "precomputed":
            self._precompute(model, runtime.device)

    def _reference_context(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        bare = unwrap_model(model)
        return bare.disable_adapter() if hasattr(bare, "disable_adapter") else nullcontext()  # type: ignore[operator]

    def load_reference(self, model: torch.nn.Module) -> torch.nn.Module:
        """The frozen reference where :meth:`setup` did not run (``tuneforge evaluate``/``predict``):
        the pretrained model of :attr:`reference_source`, on the policy's device."""
        if self.reference_source is None:
            raise ConfigError("task 'preference': this run's task_state.json does not name the pretrained model of "
                              "its reference (written by an earlier tuneforge); add \"reference_model\": "
                              "{\"name_or_path\": \"<the run's model.name_or_path>\"} to model/task_state.json")
        m = self.config.model.model_copy(update=self.reference_source)
        source = type(self)(self.options, self.config.model_copy(update={"model": m}))
        source.extra_model_kwargs = dict(self.extra_model_kwargs)
        log.info("reference model: %s", m.name_or_path)
        net = source.build_model(self.tokenizer).requires_grad_(False).eval()
        return net.to(next(unwrap_model(model).parameters()).device)

    def reference_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's summed reply log-probs ``(chosen, rejected)`` of a batch: the cached
        ones, or a no-grad forward pass of the disabled-adapter policy or the frozen model
        (loaded on first use outside ``tuneforge train``)."""
        if REF_KEYS[0] in batch:
            return batch[REF_KEYS[0]], batch[REF_KEYS[1]]
        context: AbstractContextManager[Any] = nullcontext()
        if not self.copies_reference:
            net, context = unwrap_model(model), self._reference_context(model)
        elif self.reference_model is not None:
            net = self.reference_model
        elif self._set_up:  # precomputed during training, but not for this split
            raise TrainingError("task 'preference': reference log-probs were not precomputed for this split")
        else:
            net = self.reference_model = self.load_reference(model)
        with torch.no_grad(), context, self.autocast():
            logps, _, _ = self.sequence_logps(net, batch)
        return logps[0].float(), logps[1].float()

    def _precompute(self, model: torch.nn.Module, device: torch.device) -> None:
        """Write the reference log-probs into every feature (the policy before any step, with
        its adapter disabled if it has one)."""
        net = unwrap_model(model)
        was_training = net.training
        net.eval()
        batch_size = self.config.eval_batch_size()
        with torch.no_grad(), self._reference_context(model), self.autocast():
            for split, feats in self.features.items():
                for start in range(0, len(feats), batch_size):
                    chunk = feats[start:start + batch_size]
                    batch = {k: v.to(device) for k, v in self.collate(chunk, self.tokenizer).items()
                             if k not in REF_KEYS}
                    (c, r), _, _ = self.sequence_logps(net, batch)
                    for f, cv, rv in zip(chunk, c.tolist(), r.tolist()):
                        f[REF_KEYS[0]], f[REF_KEYS[1]] = cv, rv
                log.info("reference log-probs precomputed for %d %s pairs", len(feats), split)
        net.train(was_training)

    # -- losses ---------------------------------------------------------------------------

    @staticmethod
    def sequence_logps(
        model: torch.nn.Module, batch: dict[str, torch.Tensor], reply_only: bool = True
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``((chosen, rejected) summed reply log-probs, (chosen, rejected) reply lengths, logits)``.

        With ``reply_only`` the logits are computed from the first position that predicts a reply
        token on (:func:`tuneforge.lm.next_token_logits`): the prompt's vocabulary-sized logits,
        which no loss reads, are not built. ``logits[:, i]`` scores the label of the token after
        position ``i`` of the last ``logits.shape[1]`` positions."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        logits, labels = next_token_logits(model, inputs, batch["labels"], window=reply_only)
        logps, tokens = -token_nll(logits, labels).sum(1), (labels != IGNORE_INDEX).sum(1)
        c, r = logps.chunk(2)
        nc, nr = tokens.chunk(2)
        return (c, r), (nc, nr), logits

    def chosen_nll(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """ORPO's NLL term: ``(token mean over the batch, per-pair token mean)`` of the chosen
        sequences, over the reply or (``orpo_nll_on_prompt``) every non-padding token; ``logits``
        as :meth:`sequence_logps` returns them (every position with ``orpo_nll_on_prompt``)."""
        half = logits.shape[0] // 2
        if self.options.orpo_nll_on_prompt:
            labels = batch["input_ids"][:half].masked_fill(batch["attention_mask"][:half] == 0, IGNORE_INDEX)
        else:
            labels = batch["labels"][:half]
        targets = labels[:, labels.shape[1] - logits.shape[1]:]
        nll, mask = token_nll(logits[:half], targets), targets != IGNORE_INDEX
        return nll.sum() / mask.sum().clamp(min=1), nll.sum(1) / mask.sum(1).clamp(min=1)

    def pair_outputs(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Everything about one batch of pairs: the batch ``loss`` (what is trained), per-pair
        ``losses``, rewards, log-probs and reply lengths."""
        on_prompt = self.options.loss == "orpo" and self.options.orpo_nll_on_prompt
        logps, tokens, logits = self.sequence_logps(model, batch, reply_only=not on_prompt)
        ref = self.reference_logps(model, batch) if self.reference_mode != "none" else None
        losses, chosen_reward, rejected_reward = pair_losses(self.options, logps, tokens, ref)
        loss = losses.mean()
        if self.options.loss == "orpo":
            nll, nll_per_pair = self.chosen_nll(logits, batch)
            loss, losses = loss + nll, losses + nll_per_pair
        out = {"loss": loss, "losses": losses, "chosen_reward": chosen_reward, "rejected_reward": rejected_reward,
               "chosen_logps": logps[0].detach(), "rejected_logps": logps[1].detach(),
               "chosen_tokens": tokens[0], "rejected_tokens": tokens[1]}
        if ref is not None:
            out["ref_chosen_logps"], out["ref_rejected_logps"] = ref
        return out

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pair_outputs(model, batch)["loss"]

    # -- evaluation ---------------------------------------------------------------------

    def evaluation_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-pair losses, rewards and log-probs; with scorers, also the ids generated from the
        chosen side's prompts (every rank generates: see ``CausalLMTask._generate_samples``)."""
        out = self.pair_outputs(model, batch)
        out["loss"] = out.pop("losses").detach()
        if "sample" in batch:
            chosen = {"input_ids": batch["input_ids"][: len(batch["sample"])],
                      **{k: batch[k] for k in GENERATION_KEYS}}
            out["generated"] = self._generate_samples(model, chosen)
        return out

    def compute_metrics(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]) -> dict[str, float]:
        chosen, rejected = outputs["chosen_reward"].astype(np.float64), outputs["rejected_reward"].astype(np.float64)
        if not len(chosen):
            return {name: float("nan") for name in REWARD_METRICS}
        return {
            "reward_accuracy": float(np.mean(chosen > rejected)),
            "reward_margin": float(np.mean(chosen - rejected)),
            "chosen_reward": float(np.mean(chosen)),
            "rejected_reward": float(np.mean(rejected)),
            "chosen_logps": float(np.mean(outputs["chosen_logps"])),
            "rejected_logps": float(np.mean(outputs["rejected_logps"])),
            "loss": float(np.mean(outputs["loss"])),
            **self.generation_metrics(outputs, split, features),
        }

    def predictions(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keys = [k for k in ("chosen_reward", "rejected_reward", "chosen_logps", "rejected_logps") if k in outputs]
        return [{**{k: round(float(outputs[k][i]), 6) for k in keys},
                 "prefers_chosen": bool(outputs["chosen_reward"][i] > outputs["rejected_reward"][i])}
                for i in range(len(features))]

    def write_reports(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]], directory: Path) -> None:
        """``reports/{split}_generations.jsonl`` as the causal-LM task writes it (the chosen side's
        prompt, the reference, the generated reply and its scores), when replies were generated."""
        if "generated" in outputs:
            sides = [{"input_ids": f["chosen_input_ids"], "labels": f["chosen_labels"],
                      **{k: f[k] for k in (*GENERATION_KEYS, "references") if k in f}} for f in features]
            super().write_reports(outputs, split, sides, directory)


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("preference", PreferenceTask)
