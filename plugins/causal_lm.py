"""Causal-LM instruction tuning: any ``AutoModelForCausalLM`` on prompt/response pairs or
chat ``messages``, with the loss on response tokens only, optional packing, perplexity on
evaluation splits, and generations scored on validation and test (``task.generation``:
exact match, accuracy, ROUGE, SQuAD EM/F1, chrF, BLEU and any registered metric).

Records (jsonl/json/csv)::

    {"prompt": "Translate to French: cat", "response": "chat"}
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

Chat records are rendered with the tokenizer's chat template; every assistant turn is
trained on, everything else (system/user turns, role markers) is masked with -100.
Prompt/response records use the chat template too when the tokenizer has one
(``use_chat_template: auto``), else ``prompt_template`` + response + EOS.

Generation continues the tokens training saw before the last assistant turn (the prompt
rendered exactly as in training), batched and left-padded, greedy or beam search, with the
KV cache; the reply is scored against the record's reference(s).
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from tuneforge import hookimpl
from tuneforge.config import Section
from tuneforge.data import record_origin, require_fields
from tuneforge.errors import ConfigError, DataError
from tuneforge.lm import mean_token_nll, next_token_logits, token_nll
from tuneforge.plugins.generation_scorers import (
    LOWER_IS_BETTER,
    SCORERS,
    all_metric_names,
    get_scorer,
    scorer_of_metric,
)
from tuneforge.tasks import Task, TaskOptions, any_rank, decode_ids, generate, left_pad
from tuneforge.text import IGNORE_INDEX

log = logging.getLogger(__name__)
MODEL_KEYS = ("input_ids", "attention_mask", "labels", "position_ids")


class GenerationOptions(Section):
    """``task.generation``: score what the model generates on the validation and test splits."""

    scorers: list[str] = Field(
        [], description=f"Scorers of the generated replies ({', '.join(SCORERS)}); empty: perplexity only."
    )
    num_beams: int = Field(1, ge=1, description="Beam size; 1: greedy decoding.")
    labels: list[str] | None = Field(
        None, description="accuracy: the label set replies are parsed into; default: the split's distinct references."
    )
    references_field: str | None = Field(
        None, description="Record field with the reference(s), a string or a list (e.g. SciTLDR's TLDRs); "
        "default: the response (chat: the last assistant turn).",
    )

    @field_validator("scorers")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        for name in names:
            get_scorer(name)
        return names


class CausalLMOptions(TaskOptions):
    input_format: Literal["auto", "prompt_response", "chat"] = Field(
        "auto", description="auto: 'chat' for records with messages_field, else prompt/response."
    )
    prompt_field: str = Field("prompt", description="Field holding the prompt (instruction + input).")
    prompt_format: str | None = Field(
        None, description="Build the prompt from record fields instead of prompt_field: a Python format string "
        "such as 'Summarise in one sentence:\\n\\n{source}' (a list field is joined with spaces), so a csv/jsonl "
        "data set is used as it is.",
    )
    response_field: str = Field(
        "response", description="Field holding the target response; a list of references trains on the first "
        "and scores generations against all.",
    )
    messages_field: str = Field("messages", description="Field holding a list of {role, content} chat turns.")
    use_chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="Render prompt/response pairs with the tokenizer's chat template (auto: when it has one)."
    )
    prompt_template: str = Field(
        "{prompt}\n", description="Without a chat template: text before the response; must contain {prompt}."
    )
    train_on_prompt: bool = Field(False, description="Also compute the loss on prompt tokens.")
    truncate_field: str | None = Field(
        None, description="When an example is longer than data.max_length, cut this record field (a passage "
        "or document that task.prompt_format places in the prompt) from its end until the example fits, so the "
        "instruction, the question and the reply are kept; without it the example is cut from its end.",
    )
    packing: bool = Field(
        False,
        description="Pack training examples into blocks of data.max_length; attention and positions are "
        "reset per example (needs a model that honours packed position_ids, e.g. Llama, GPT-2, Qwen2, Mistral).",
    )
    packing_strategy: Literal["best_fit", "in_order"] = Field(
        "best_fit", description="How examples fill the blocks: best_fit (best-fit decreasing: the longest first, "
        "each into the block it fills best; least padding) or in_order (next-fit in the data's order)."
    )
    generation_samples: int = Field(
        0, ge=0, description="Without generation scorers: generate responses for the first N test records."
    )
    max_new_tokens: int = Field(64, ge=1, description="Length limit of generated replies (samples and scoring).")
    generation: GenerationOptions = Field(
        default_factory=GenerationOptions, description="Scoring of generated replies on validation and test."
    )


class CausalLMTask(Task):
    name = "causal_lm"
    Options = CausalLMOptions
    primary_metric = "perplexity"
    metric_names = ("loss", "perplexity", "eval_tokens", "distinct_fraction", *all_metric_names())
    greater_is_better = False
    metadata_keys = frozenset({"references"})
    options: CausalLMOptions

    def __init__(self, options: Any, config: Any) -> None:
        super().__init__(options, config)
        if "{prompt}" not in options.prompt_template:
            raise ConfigError(f"task.prompt_template must contain '{{prompt}}', got {options.prompt_template!r}")
        self.tokenizer: Any = None  # set by load_tokenizer/encode; decodes generation samples
        #: Generate on every validation/test record: scorers or registered metrics need replies.
        self.scoring = bool(options.generation.scorers or config.evaluation.extra_metrics)
        self._validation: tuple[dict[str, np.ndarray], list[dict[str, Any]]] | None = None  # last scored
        if options.truncate_field is not None and options.input_format == "chat":
            raise ConfigError("task.truncate_field cuts a field of prompt/response records; chat records "
                              "(input_format: chat) are cut from their end")
        metric = config.evaluation.metric
        owner = scorer_of_metric(metric) if metric else None
        if owner is not None and owner not in options.generation.scorers:
            raise ConfigError(
                f"evaluation.metric: '{metric}' is a score of the generation scorer '{owner}'; add it to "
                f"task.generation.scorers (now: {options.generation.scorers or 'none'})"
            )
        if metric == "distinct_fraction" and not self.scoring:
            raise ConfigError("evaluation.metric: 'distinct_fraction' needs task.generation.scorers")

    @classmethod
    def metric_greater_is_better(cls, metric: str) -> bool:
        """Loss, perplexity and the unparseable fraction go down; generation scores go up."""
        return metric not in ("loss", "perplexity", "eval_tokens", *LOWER_IS_BETTER)

    def prepare(self, train_records: list[dict[str, Any]]) -> None:
        o = self.options
        source = self.config.data.train or "train split"
        if o.input_format == "prompt_response":
            prompt = [] if o.prompt_format is not None else [o.prompt_field]
            require_fields(train_records, [*prompt, o.response_field], source)
        elif o.input_format == "chat":
            require_fields(train_records, [o.messages_field], source)

    # -- model ------------------------------------------------------------------------

    def load_tokenizer(self) -> Any:
        tokenizer = super().load_tokenizer()
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ConfigError(
                    f"tokenizer of '{self.config.model.name_or_path}' has neither a pad nor an eos token; "
                    "use a tokenizer that defines eos_token"
                )
            tokenizer.pad_token = tokenizer.eos_token
            log.info("tokenizer has no pad token; padding with eos token %r", tokenizer.eos_token)
        self.tokenizer = tokenizer
        return tokenizer

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_path(), **self.pretrained_kwargs())
        embeddings: Any = model.get_input_embeddings()
        if len(tokenizer) > embeddings.num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        for cfg in (model.config, getattr(model, "generation_config", None)):
            if cfg is not None and getattr(cfg, "pad_token_id", None) is None:
                cfg.pad_token_id = tokenizer.pad_token_id
        return model

    # -- features ---------------------------------------------------------------------

    def _uses_chat(self, record: dict[str, Any]) -> bool:
        fmt = self.options.input_format
        return fmt == "chat" or (fmt == "auto" and self.options.messages_field in record)

    def _template(self, tokenizer: Any, source: str) -> bool:
        mode = self.options.use_chat_template
        has = bool(getattr(tokenizer, "chat_template", None))
        if mode == "always" and not has:
            raise ConfigError(f"task.use_chat_template=always but the tokenizer of {source} has no chat template")
        return has and mode != "never"

    def formatted(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        """``record`` with its prompt built by ``prompt_format`` (unchanged without one) and a list
        response reduced to its first reference (the training target; references keep the list)."""
        o = self.options
        response = record.get(o.response_field)
        listed = isinstance(response, list) and bool(response) and all(isinstance(r, str) for r in response)
        if o.prompt_format is None and not listed:  # nothing to change: no copy
            return record
        out = dict(record)
        if o.prompt_format is not None and not self._uses_chat(record):
            fields = {k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in record.items()}
            try:
                out[o.prompt_field] = o.prompt_format.format_map(fields)
            except KeyError as exc:
                have = ", ".join(sorted(record)) or "none"
                raise DataError(f"{where}: task.prompt_format names field {exc} that the record lacks "
                                f"(fields present: {have})") from None
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"task.prompt_format: not a valid format string ({exc}); name fields as "
                                  "{field} and write literal braces as {{ }}") from None
        if listed and isinstance(response, list):
            out[o.response_field] = response[0]
            out.setdefault("_references", response)
        return out

    def encode_record(self, record: dict[str, Any], tokenizer: Any, where: str) -> tuple[list[int], list[int], int]:
        """``(input_ids, labels, prompt_length)`` of one record before truncation.

        ``prompt_length`` is the number of tokens before the reply that generation is scored on
        (the last assistant turn): what generation continues."""
        o = self.options
        if self._uses_chat(record):
            messages = self._messages(record, where)
            if not getattr(tokenizer, "chat_template", None):
                raise DataError(
                    f"{where}: chat '{o.messages_field}' need a tokenizer with a chat template; "
                    "set model.tokenizer to one that has it, or give prompt/response fields"
                )
            return self._encode_chat(messages, tokenizer, where)
        for name in (o.prompt_field, o.response_field):
            if not isinstance(record.get(name), str):
                have = ", ".join(sorted(record)) or "none"
                raise DataError(
                    f"{where}: field '{name}' must be a string (fields present: {have}); chat records need "
                    f"'{o.messages_field}'"
                )
        prompt, response = record[o.prompt_field], record[o.response_field]
        if not response.strip():
            raise DataError(f"{where}: field '{o.response_field}' is empty")
        if self._template(tokenizer, where):
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self._encode_chat(msgs, tokenizer, where)
        prompt_ids = tokenizer(o.prompt_template.format(prompt=prompt), add_special_tokens=True)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            response_ids = [*response_ids, tokenizer.eos_token_id]
        ids = list(prompt_ids) + response_ids
        labels = ids.copy() if o.train_on_prompt else [IGNORE_INDEX] * len(prompt_ids) + response_ids
        return ids, labels, len(prompt_ids)

    def encode_prompt(self, record: dict[str, Any], tokenizer: Any, where: str) -> tuple[list[int], list[int], int]:
        """Like :meth:`encode_record` for ``tuneforge predict``: the reply is optional. The
        result ends where the model should continue (``prompt_length``); a reference reply,
        when the record has one, follows and is scored."""
        o = self.options
        render = lambda msgs: tokenizer(  # noqa: E731
            tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False
        )["input_ids"]
        if self._uses_chat(record):
            messages = self._messages(record, where, need_assistant=False)
            if not getattr(tokenizer, "chat_template", None):
                raise DataError(f"{where}: chat '{o.messages_field}' need a tokenizer with a chat template")
            has_reply = messages[-1]["role"] == "assistant"
            prompt = render(messages[:-1] if has_reply else messages)
        else:
            if not isinstance(record.get(o.prompt_field), str):
                raise DataError(f"{where}: field '{o.prompt_field}' must be a string")
            reply = record.get(o.response_field)
            has_reply = isinstance(reply, str) and bool(reply.strip())
            if self._template(tokenizer, where):
                prompt = render([{"role": "user", "content": record[o.prompt_field]}])
            else:
                text = o.prompt_template.format(prompt=record[o.prompt_field])
                prompt = tokenizer(text, add_special_tokens=True)["input_ids"]
        if has_reply:
            ids, labels, _ = self.encode_record(record, tokenizer, where)
            if ids[: len(prompt)] == list(prompt):
                return ids, labels, len(prompt)
        return list(prompt), [IGNORE_INDEX] * len(prompt), len(prompt)

    def _messages(self, record: dict[str, Any], where: str, need_assistant: bool = True) -> list[dict[str, str]]:
        field = self.options.messages_field
        messages = record.get(field)
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: field '{field}' must be a non-empty list of {{role, content}} objects")
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: {field}[{j}] must be an object with string 'role' and 'content', got {m!r}")
        if need_assistant and not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: field '{field}' has no 'assistant' turn to train on")
        return messages

    def references(self, record: dict[str, Any], where: str) -> list[str]:
        """The reference replies generation is scored against (``task.generation.references_field``,
        else the response, or a chat record's last assistant turn)."""
        g, o = self.options.generation, self.options
        if g.references_field is not None:
            value, field = record.get(g.references_field), g.references_field
        elif self._uses_chat(record):
            value, field = [m["content"] for m in self._messages(record, where) if m["role"] == "assistant"][-1], o.messages_field
        else:
            value, field = record.get("_references", record.get(o.response_field)), o.response_field
        refs = [value] if isinstance(value, str) else value
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise DataError(f"{where}: field '{field}' must hold a non-empty reference string or a list of them, "
                            f"got {value!r:.80}")
        refs = [r.strip() for r in refs]
        if g.labels is not None and "accuracy" in g.scorers:
            unknown = [r for r in refs if r not in g.labels]
            if unknown:
                raise DataError(f"{where}: reference '{unknown[0]}' is not in task.generation.labels "
                                f"({', '.join(g.labels)})")
        return refs

    def _encode_chat(self, messages: list[dict[str, str]], tokenizer: Any, where: str) -> tuple[list[int], list[int], int]:
        render = lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
        text = render(messages, False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before, through = render(messages[:i], True) if i else "", render(messages[: i + 1], False)
            if not (text.startswith(before) and text.startswith(through)):
                raise DataError(
                    f"{where}: the tokenizer's chat template does not render conversations prefix by prefix, so "
                    "assistant turns cannot be located; give prompt/response fields or use_chat_template=never"
                )
            spans.append((len(before), len(through)))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        if self.options.train_on_prompt:
            labels = ids.copy()
        else:
            labels = [t if any(s <= a < e for s, e in spans) else IGNORE_INDEX for t, (a, _) in zip(ids, enc["offset_mapping"])]
        start = spans[-1][0]  # generation continues the conversation before the last assistant turn
        prompt_length = next((j for j, (a, _) in enumerate(enc["offset_mapping"]) if a >= start), len(ids))
        return ids, labels, prompt_length

    def _fitted(self, record: dict[str, Any], tokenizer: Any, where: str, encode: Any,
                max_length: int) -> tuple[dict[str, Any], list[int], list[int], int, bool]:
        """``(formatted record, input_ids, labels, prompt_length, shortened)`` of ``record`` encoded
        by ``encode``; with ``task.truncate_field``, an example longer than ``max_length`` is
        encoded again with that field's text cut by the overflow (in tokens, from its end)."""
        rec = self.formatted(record, where)
        ids, labels, prompt_length = encode(rec, tokenizer, where)
        field = self.options.truncate_field
        if field is None or len(ids) <= max_length or self._uses_chat(record):
            return rec, ids, labels, prompt_length, False
        value = record.get(field)
        if isinstance(value, list):
            value = " ".join(map(str, value))
        if not isinstance(value, str):
            raise DataError(f"{where}: task.truncate_field '{field}' must name a text field of the record "
                            f"(fields present: {', '.join(sorted(record)) or 'none'})")
        pieces = tokenizer(value, add_special_tokens=False)["input_ids"]
        for attempt in range(4):  # decoding and re-tokenising can shift a token or two: cut a little more
            over = len(ids) - max_length
            if over <= 0 or not pieces:
                break
            pieces = pieces[: max(0, len(pieces) - over - attempt)]
            cut = dict(record)
            cut[field] = tokenizer.decode(pieces)
            rec = self.formatted(cut, where)
            ids, labels, prompt_length = encode(rec, tokenizer, where)
        return rec, ids, labels, prompt_length, True

    def encode(self, records: list[dict[str, Any]], tokenizer: Any, split: str) -> list[dict[str, Any]]:
        self.tokenizer = tokenizer
        source = getattr(self.config.data, split, None) or f"{split} split"
        max_length = self.config.data.max_length
        features, truncated, empty, cut_prompts = [], 0, 0, 0
        shortened = 0
        if split == "predict":  # generate a reply for every record (and score a given one)
            for i, rec in enumerate(records):
                where = record_origin(rec, source, i)
                _, ids, labels, prompt_length, cut = self._fitted(rec, tokenizer, where, self.encode_prompt, max_length)
                shortened += cut
                if prompt_length > max_length:  # keep the end of the prompt: that is what is continued
                    truncated += 1
                    ids = ids[prompt_length - max_length : prompt_length]
                    labels, prompt_length = [IGNORE_INDEX] * max_length, max_length
                ids, labels = ids[:max_length], labels[:max_length]
                features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels,
                                 "prompt_length": prompt_length, "sample": 1})
            if truncated:
                log.info("predict: %d of %d prompts cut to their last %d tokens", truncated, len(records), max_length)
            return features
        for i, original in enumerate(records):
            where = record_origin(original, source, i)
            rec, ids, labels, prompt_length, cut = self._fitted(original, tokenizer, where, self.encode_record, max_length)
            shortened += cut
            if len(ids) > max_length:
                truncated += 1
                ids, labels = ids[:max_length], labels[:max_length]
            if all(lab == IGNORE_INDEX for lab in labels[1:]):
                empty += 1
                if split == "train":
                    continue
            feat: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
            if split != "train" and self.scoring:
                cut_prompts += prompt_length >= len(ids)
                feat["references"] = self.references(rec, where)
            if split == "test" or (split != "train" and self.scoring):
                feat["prompt_length"] = min(prompt_length, len(ids))
                feat["sample"] = int(self.scoring or i < self.options.generation_samples)
            features.append(feat)
        if shortened:
            log.info("%s: %d of %d examples had their '%s' cut to fit data.max_length=%d", split, shortened,
                     len(records), self.options.truncate_field, max_length)
        if truncated:
            log.info("%s: %d of %d examples truncated to %d tokens", split, truncated, len(records), max_length)
        if cut_prompts:
            log.warning("%s: %d of %d prompts do not fit data.max_length=%d; their replies are generated from the "
                        "cut prompt (raise data.max_length)", split, cut_prompts, len(records), max_length)
        if empty:
            action = "dropped from training" if split == "train" else "kept, they add no tokens to perplexity"
            log.warning("%s: %d of %d examples have no response tokens within data.max_length=%d (%s)",
                        split, empty, len(records), max_length, action)
        if split == "train" and not features:
            raise DataError(f"{source}: no training example has response tokens within data.max_length={max_length}")
        if split == "train" and self.options.packing:
            features = pack_features(features, max_length, tokenizer.pad_token_id, self.options.packing_strategy)
        return features

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # use_cache=False: no KV cache to build, and Hugging Face derives the packed-sequence
        # attention mask from position_ids only when there is no cache.
        # Logits only from the first reply token on (tuneforge.lm): the prompt's are read by no loss.
        inputs = {k: v for k, v in batch.items() if k in MODEL_KEYS and k != "labels"}
        return mean_token_nll(*next_token_logits(model, {**inputs, "use_cache": False}, batch["labels"]))

    # -- evaluation ---------------------------------------------------------------------

    def evaluation_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k in MODEL_KEYS and k != "labels"}
        logits, labels = next_token_logits(model, {**inputs, "use_cache": False}, batch["labels"])
        nll = token_nll(logits, labels)
        mask = labels != IGNORE_INDEX
        nll_sum, tokens = (nll * mask).sum(1), mask.sum(1)
        out = {"nll_sum": nll_sum, "tokens": tokens, "loss": nll_sum / tokens.clamp(min=1)}
        if "sample" in batch:
            out["generated"] = self._generate_samples(model, batch)
        return out

    def _generate_samples(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Greedy (or beam-search) continuations of the prompts flagged ``sample``; other rows are -100."""
        flags = batch["sample"].bool()
        empty = torch.full((len(flags), 1), IGNORE_INDEX, dtype=torch.long, device=flags.device)
        if not any_rank(bool(flags.any()), flags.device):
            return empty
        pad = int(self.tokenizer.pad_token_id)
        prompts = [row[: int(n)] for row, n in zip(batch["input_ids"], batch["prompt_length"])]
        input_ids, attention_mask = left_pad(prompts, pad)
        out = generate(model, input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=self.options.max_new_tokens,
                       num_beams=self.options.generation.num_beams, do_sample=False, use_cache=True, pad_token_id=pad)
        new = out[:, input_ids.shape[1]:]
        new = new.masked_fill(~flags[:, None], IGNORE_INDEX)
        return new if new.shape[1] else empty

    def compute_metrics(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]) -> dict[str, float]:
        return {**perplexity_metrics(outputs["nll_sum"], outputs["tokens"]),
                **self.generation_metrics(outputs, split, features)}

    def generation_metrics(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]) -> dict[str, float]:
        """Every scorer's metrics and ``distinct_fraction`` of a split's generated replies (empty
        when nothing was scored); a validation split is kept for :meth:`write_validation_generations`."""
        if not (self.scoring and "generated" in outputs):
            return {}
        replies, references = self.generations(outputs, features)
        metrics: dict[str, float] = {}
        for scores in self.scorer_functions(references).values():
            metrics.update(scores(replies, references))
        metrics["distinct_fraction"] = len(set(replies)) / max(1, len(replies))
        if split == "validation":
            self._validation = (outputs, features)
        return metrics

    def generations(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        """Decoded replies and reference lists of the features that were generated for."""
        rows = [i for i, f in enumerate(features) if f.get("sample") and "references" in f]
        return ([decode_ids(self.tokenizer, outputs["generated"][i]) for i in rows],
                [list(features[i]["references"]) for i in rows])

    def metric_inputs(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]]) -> tuple[list[Any], list[Any]] | None:
        """Generated replies and their reference lists, one per example (for registered metrics)."""
        return self.generations(outputs, features) if "generated" in outputs else None

    def scorer_functions(self, references: list[list[str]]) -> dict[str, Any]:
        """The configured scorers as ``fn(replies, references)``; accuracy's label set is bound here
        (``task.generation.labels``, else every distinct reference of the split)."""
        g = self.options.generation
        labels = g.labels if g.labels is not None else sorted({r for refs in references for r in refs})
        return {name: functools.partial(SCORERS[name].fn, labels=labels) if name == "accuracy" else SCORERS[name].fn
                for name in g.scorers}

    def predictions(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        preds = []
        for i, (s, n) in enumerate(zip(outputs["nll_sum"], outputs["tokens"])):
            p: dict[str, Any] = {"tokens": int(n), "nll": round(float(s), 6)}
            p["perplexity"] = round(math.exp(float(s) / n), 6) if n else None
            if "generated" in outputs and features[i].get("sample"):
                p["generated"] = decode_ids(self.tokenizer, outputs["generated"][i])
            preds.append(p)
        return preds

    def write_reports(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]], directory: Path) -> None:
        """``reports/{split}_generations.jsonl``: prompt, reference(s), output and, when scored,
        the example's own score under every scorer."""
        if "generated" not in outputs:
            return
        scorers = self.scorer_functions(self.generations(outputs, features)[1]) if self.scoring else {}
        rows = []
        for i, feat in enumerate(features):
            if not feat.get("sample"):
                continue
            row: dict[str, Any] = {"prompt": self.tokenizer.decode(feat["input_ids"][: feat["prompt_length"]], skip_special_tokens=False)}
            output = decode_ids(self.tokenizer, outputs["generated"][i])
            if "references" in feat:
                refs = list(feat["references"])
                row.update(reference=refs[0] if len(refs) == 1 else refs, output=output)
                if scorers:
                    row["score"] = {k: round(v, 6) for fn in scorers.values() for k, v in fn([output], [refs]).items()}
            else:  # a sample without scoring: the trained reply is the reference
                trained = [t for t in feat["labels"][feat["prompt_length"]:] if t != IGNORE_INDEX]
                row.update(reference=decode_ids(self.tokenizer, trained), output=output)
            rows.append(row)
        out = directory / "reports"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{split}_generations.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                       encoding="utf-8")

    def write_validation_generations(self, directory: Path) -> None:
        """Write the generations of the last scored validation evaluation (see ``tf_on_evaluate``)."""
        if self._validation is not None:
            outputs, features = self._validation
            self.write_reports(outputs, "validation", features, directory)


def perplexity_metrics(nll_sum: np.ndarray, tokens: np.ndarray) -> dict[str, float]:
    """Token-weighted mean negative log-likelihood (``loss``) and ``perplexity = exp(loss)``."""
    total = float(np.sum(tokens))
    if total == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "eval_tokens": 0.0}
    loss = float(np.sum(nll_sum.astype(np.float64))) / total
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "eval_tokens": total}


def pack_features(features: list[dict[str, Any]], block: int, pad_id: int,
                  strategy: str = "best_fit") -> list[dict[str, Any]]:
    """Pack examples (each at most ``block`` tokens) into blocks of exactly ``block`` tokens.

    Examples are kept whole. ``best_fit`` (best-fit decreasing, TRL's default): the longest
    example first, each into the open block it fills best, a new block when none has room; blocks
    of examples about half the block long are filled in pairs instead of one by one, so there is
    little padding left. ``in_order``: next-fit in the data's order (a block is closed when the next
    example does not fit). ``position_ids`` restart at 0 for every example, which makes Hugging
    Face models attend only within each example (packed-sequence masks derived from position ids),
    and no ``attention_mask`` is emitted. Each example's first label is -100, so no token is
    trained to predict across an example boundary. The tail of a block is padding: pad ids,
    labels -100, its own position run.
    """
    groups: list[list[int]] = []
    if strategy == "in_order":
        used = block
        for i, f in enumerate(features):
            if used + len(f["input_ids"]) > block:
                groups.append([])
                used = 0
            groups[-1].append(i)
            used += len(f["input_ids"])
    else:
        free: list[tuple[int, int]] = []  # (room left, group) of the open blocks, sorted
        for i in sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"])):
            n = len(features[i]["input_ids"])
            at = bisect.bisect_left(free, (n, -1))  # the fullest block with room for n
            if at < len(free):
                room, g = free.pop(at)
            else:
                room, g = block, len(groups)
                groups.append([])
            groups[g].append(i)
            if room - n > 0:
                bisect.insort(free, (room - n, g))
    blocks = []
    for members in groups:
        cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in members:
            f = features[i]
            cur["input_ids"] += f["input_ids"]
            cur["labels"] += [IGNORE_INDEX, *f["labels"][1:]]
            cur["position_ids"] += list(range(len(f["input_ids"])))
        fill = block - len(cur["input_ids"])
        cur["input_ids"] += [pad_id] * fill
        cur["labels"] += [IGNORE_INDEX] * fill
        cur["position_ids"] += list(range(fill))
        blocks.append(cur)
    used_tokens = sum(len(f["input_ids"]) for f in features)
    log.info("packed %d examples into %d blocks of %d tokens (%s, %.1f%% padding)", len(features), len(blocks),
             block, strategy.replace("_", " "), 100.0 * (1 - used_tokens / max(1, len(blocks) * block)))
    return blocks


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("causal_lm", CausalLMTask)


@hookimpl
def tf_on_evaluate(run: Any, step: int, split: str, metrics: dict[str, float]) -> None:
    """Write ``reports/validation_generations.jsonl`` after every scored validation evaluation
    (the test split's generations come with the task's ``write_reports``)."""
    if split == "validation" and run.is_main and isinstance(run.task, CausalLMTask):
        run.task.write_validation_generations(run.run_dir)
