"""Causal-LM instruction tuning: parsing, label masking, packing, perplexity, scored generations, tiny runs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge import hookimpl
from tuneforge.config import resolve_paths, validate
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.causal_lm import CausalLMTask, pack_features, perplexity_metrics

pytestmark = pytest.mark.usefixtures("tf_single_thread")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def make_task(model_dir: str, data: dict[str, str] | None = None, **options) -> CausalLMTask:
    cfg = validate({
        "model": {"name_or_path": model_dir},
        "task": {"name": "causal_lm", **options},
        "data": {"train": "train.jsonl", "max_length": 64, **(data or {})},
    })
    return CausalLMTask(CausalLMTask.parse_options(cfg.task.options()), cfg)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def trained_text(tokenizer, feature) -> str:
    return tokenizer.decode([t for t in feature["labels"] if t != -100])


def test_prompt_response_without_template_masks_prompt(tiny_llama, tokenizer):
    task = make_task(tiny_llama, use_chat_template="never", prompt_template="Q: {prompt}\nA:")
    [feat] = task.encode([{"prompt": "play music", "response": " yes please"}], tokenizer, "train")
    prompt_ids = tokenizer("Q: play music\nA:")["input_ids"]
    n = len(prompt_ids)
    assert feat["input_ids"][:n] == prompt_ids
    assert feat["labels"][:n] == [-100] * n
    assert feat["labels"][n:] == feat["input_ids"][n:]
    assert feat["input_ids"][-1] == tokenizer.eos_token_id  # the model learns to stop
    assert trained_text(tokenizer, feat) == " yes please</s>"


def test_chat_messages_train_only_assistant_turns(tiny_llama, tokenizer):
    task = make_task(tiny_llama)
    messages = [
        {"role": "system", "content": "be short"},
        {"role": "user", "content": "good"},
        {"role": "assistant", "content": "bad"},
        {"role": "user", "content": "sun"},
        {"role": "assistant", "content": "rain"},
    ]
    [feat] = task.encode([{"messages": messages}], tokenizer, "validation")
    text = tokenizer.decode(feat["input_ids"])
    assert text == tokenizer.apply_chat_template(messages, tokenize=False)
    # exactly the two assistant contents (with their end-of-turn) carry labels
    spans, current = [], []
    for tok, lab in zip(feat["input_ids"], feat["labels"]):
        if lab != -100:
            assert lab == tok
            current.append(tok)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    spans += [tokenizer.decode(current)] if current else []
    assert spans == ["bad</s>\n", "rain</s>\n"]


def test_prompt_response_uses_chat_template_when_present(tiny_llama, tokenizer):
    task = make_task(tiny_llama)
    [feat] = task.encode([{"prompt": "good", "response": "bad"}], tokenizer, "test")
    assert tokenizer.decode(feat["input_ids"]).startswith("<|user|>\ngood</s>\n<|assistant|>\n")
    assert trained_text(tokenizer, feat) == "bad</s>\n"
    assert tokenizer.decode(feat["input_ids"][: feat["prompt_length"]]) == "<|user|>\ngood</s>\n<|assistant|>\n"


def test_collate_pads_inputs_with_pad_and_labels_with_ignore(tiny_llama, tokenizer):
    task = make_task(tiny_llama, use_chat_template="never")
    feats = task.encode([{"prompt": "a", "response": "b"}, {"prompt": "good movie today", "response": "bad film"}],
                        tokenizer, "train")
    batch = task.collate(feats, tokenizer)
    short = len(feats[0]["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["input_ids"][0, short:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][0, short:] == -100).all() and (batch["attention_mask"][0, short:] == 0).all()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "record 2: field 'messages' has no 'assistant' turn"),
        ({"messages": [{"role": "user"}]}, "record 2: messages[0] must be an object with string 'role' and 'content'"),
        ({"messages": "hi"}, "record 2: field 'messages' must be a non-empty list"),
        ({"prompt": "hi"}, "record 2: field 'response' must be a string"),
        ({"prompt": "hi", "response": 3}, "record 2: field 'response' must be a string"),
        ({"prompt": "hi", "response": "  "}, "record 2: field 'response' is empty"),
    ],
)
def test_bad_records_name_file_record_and_field(tiny_llama, tokenizer, record, message):
    task = make_task(tiny_llama, data={"validation": "dev.jsonl"})
    good = {"prompt": "good", "response": "bad"}
    with pytest.raises(DataError) as err:
        task.encode([good, record], tokenizer, "validation")
    assert "dev.jsonl" in str(err.value) and message in str(err.value)


def test_chat_without_template_is_a_data_error(tiny_llama, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = None
    task = make_task(tiny_llama)
    with pytest.raises(DataError, match="record 1: chat 'messages' need a tokenizer with a chat template"):
        task.encode([{"messages": [{"role": "assistant", "content": "x"}]}], tok, "train")
    with pytest.raises(ConfigError, match="use_chat_template=always"):
        make_task(tiny_llama, use_chat_template="always").encode([{"prompt": "a", "response": "b"}], tok, "train")


def test_truncation_and_examples_without_response_tokens(tiny_llama, tokenizer, caplog):
    task = make_task(tiny_llama, data={"max_length": 12}, use_chat_template="never")
    long_prompt = {"prompt": "good " * 30, "response": "bad"}
    fits = {"prompt": "good", "response": "bad"}
    with caplog.at_level(logging.INFO):
        feats = task.encode([fits, long_prompt], tokenizer, "train")
    assert len(feats) == 1 and len(feats[0]["input_ids"]) <= 12
    assert "1 of 2 examples truncated to 12 tokens" in caplog.text
    assert "1 of 2 examples have no response tokens" in caplog.text and "dropped from training" in caplog.text
    kept = task.encode([fits, long_prompt], tokenizer, "validation")
    assert len(kept) == 2 and len(kept[1]["input_ids"]) == 12  # evaluation keeps one row per record
    with pytest.raises(DataError, match="no training example has response tokens"):
        task.encode([long_prompt], tokenizer, "train")


def test_pad_token_falls_back_to_eos(tiny_gpt2, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    task = make_task(tiny_gpt2)
    task.config.model.tokenizer = str(tmp_path)
    loaded = task.load_tokenizer()
    assert loaded.pad_token == loaded.eos_token == "</s>"
    [feat] = task.encode([{"prompt": "a", "response": "b"}], loaded, "train")
    assert feat["labels"][-2] == loaded.eos_token_id  # eos still trained although it pads


def test_pack_features_layout():
    feats = [
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
        {"input_ids": [4, 5], "labels": [-100, 5]},
        {"input_ids": [6, 7, 8, 9], "labels": [6, 7, 8, 9]},
    ]
    blocks = pack_features(feats, block=6, pad_id=0, strategy="in_order")
    assert blocks == [
        {"input_ids": [1, 2, 3, 4, 5, 0], "labels": [-100, 2, 3, -100, 5, -100], "position_ids": [0, 1, 2, 0, 1, 0]},
        {"input_ids": [6, 7, 8, 9, 0, 0], "labels": [-100, 7, 8, 9, -100, -100], "position_ids": [0, 1, 2, 3, 0, 1]},
    ]
    # best fit, longest first: 4 tokens open a block, 3 do not fit beside them, 2 fill it exactly
    assert pack_features(feats, block=6, pad_id=0) == [
        {"input_ids": [6, 7, 8, 9, 4, 5], "labels": [-100, 7, 8, 9, -100, 5], "position_ids": [0, 1, 2, 3, 0, 1]},
        {"input_ids": [1, 2, 3, 0, 0, 0], "labels": [-100, 2, 3, -100, -100, -100], "position_ids": [0, 1, 2, 0, 1, 2]},
    ]


def test_best_fit_packing_fills_blocks_that_next_fit_leaves_half_empty():
    # examples of about half a block, longest first: in order, the long ones sit alone;
    # best fit pairs each long one with the short one that fills its block best
    lengths = [60, 58, 55, 52, 45, 42, 40, 38]
    feats = [{"input_ids": [7] * n, "labels": [7] * n} for n in lengths]
    in_order = pack_features(feats, block=100, pad_id=0, strategy="in_order")
    best = pack_features(feats, block=100, pad_id=0)
    assert len(in_order) == 6 and len(best) == 4
    for blocks in (best, in_order):  # every example whole, exactly once
        assert sum(t == 7 for b in blocks for t in b["input_ids"]) == sum(lengths)
    assert [sum(t == 7 for t in b["input_ids"]) for b in best] == [100, 100, 100, 90]  # 60+40, 58+42, 55+45, 52+38
    assert [sum(t == 7 for t in b["input_ids"]) for b in in_order] == [60, 58, 55, 97, 82, 38]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_packed_loss_equals_separate_examples(fixture, request, tokenizer, tiny_instruction_data):
    """Packing must not let an example see (or predict) its neighbours: the summed loss of
    a packed block equals the summed losses of its examples run one by one."""
    model_dir = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    task = make_task(model_dir, data={"max_length": 64}, packing=True)
    records = [json.loads(x) for x in Path(tiny_instruction_data["train"]).read_text().splitlines()[:4]]
    single = make_task(model_dir, data={"max_length": 64}).encode(records, tokenizer, "train")
    blocks = task.encode(records, tokenizer, "train")
    assert len(blocks) < len(single) and all(len(b["input_ids"]) == 64 for b in blocks)

    def summed_nll(batch):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="sum"
        )

    with torch.no_grad():
        packed = summed_nll(task.collate(blocks, tokenizer))
        separate = sum(summed_nll(task.collate([f], tokenizer)) for f in single)
        naive = summed_nll({"input_ids": torch.tensor([b["input_ids"] for b in blocks]),
                            "labels": torch.tensor([b["labels"] for b in blocks])})
        trained_tokens = sum(t != -100 for b in blocks for t in b["labels"][1:])
        task_loss = task.training_loss(model, task.collate(blocks, tokenizer)).item()
    assert packed.item() == pytest.approx(separate.item(), rel=1e-4)
    assert task_loss * trained_tokens == pytest.approx(separate.item(), rel=1e-4)
    assert abs(naive.item() - separate.item()) > 1e-2  # without position ids examples would see each other


def test_predict_split_generates_replies_and_scores_given_ones(tiny_llama, tokenizer):
    """``tuneforge predict``: prompts without replies are continued; a given reply is also scored."""
    task = make_task(tiny_llama, max_new_tokens=4)
    records = [
        {"prompt": "good"},
        {"messages": [{"role": "user", "content": "sun"}]},
        {"prompt": "fun", "response": "boring"},
    ]
    feats = task.encode(records, tokenizer, "predict")
    assert [tokenizer.decode(f["input_ids"][: f["prompt_length"]]) for f in feats] == [
        "<|user|>\ngood</s>\n<|assistant|>\n", "<|user|>\nsun</s>\n<|assistant|>\n", "<|user|>\nfun</s>\n<|assistant|>\n"]
    assert all(t == -100 for t in feats[0]["labels"]) and trained_text(tokenizer, feats[2]) == "boring</s>\n"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        out = task.evaluation_step(model, task.collate(feats, tokenizer))
    assert out["generated"].shape == (3, 4)
    preds = task.predictions({k: v.numpy() for k, v in out.items()}, feats, records)
    reply_tokens = len(tokenizer("boring</s>\n", add_special_tokens=False)["input_ids"])
    assert [p["tokens"] for p in preds] == [0, 0, reply_tokens] and preds[0]["perplexity"] is None
    assert preds[2]["perplexity"] > 1 and all(isinstance(p["generated"], str) for p in preds)


def test_perplexity_is_token_weighted():
    # two examples: 3 tokens with total NLL 3.0, 1 token with NLL 2.0 -> mean 5/4
    m = perplexity_metrics(np.array([3.0, 2.0]), np.array([3, 1]))
    assert m["loss"] == pytest.approx(1.25) and m["perplexity"] == pytest.approx(math.exp(1.25))
    assert m["eval_tokens"] == 4


def test_evaluation_step_per_example_nll(tiny_llama, tokenizer):
    task = make_task(tiny_llama, use_chat_template="never")
    feats = task.encode([{"prompt": "a", "response": "b c"}, {"prompt": "good movie", "response": "bad"}],
                        tokenizer, "validation")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    batch = task.collate(feats, tokenizer)
    with torch.no_grad():
        out = task.evaluation_step(model, batch)
        for i, f in enumerate(feats):  # the model's own mean loss on each example alone
            alone = model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])).loss
            assert out["loss"][i].item() == pytest.approx(alone.item(), rel=1e-4)
    assert out["tokens"].tolist() == [sum(t != -100 for t in f["labels"][1:]) for f in feats]


def test_tiny_config_run_learns(tf_run, tiny_llama, tmp_path):
    """configs/causal-lm-tiny.yaml (shipped toy data) on the tiny random Llama."""
    raw = yaml.safe_load((CONFIGS / "causal-lm-tiny.yaml").read_text())
    resolve_paths(raw, CONFIGS)
    raw["model"]["name_or_path"] = tiny_llama
    raw["output"]["dir"] = str(tmp_path / "run")
    results, run_dir = tf_run(raw)
    assert results["status"] == "completed" and results["metric"] == "perplexity"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [x["loss"] for x in lines if x["split"] == "train"]
    val = [x["perplexity"] for x in lines if x["split"] == "validation"]
    assert train[-1] < train[0] * 0.7
    assert len(val) == 2 and val[-1] < val[0]
    assert results["test"]["perplexity"] < 400  # vocabulary size: below chance
    samples = [json.loads(x) for x in (run_dir / "reports" / "test_generations.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["prompt"].startswith("<|user|>") and s["reference"] for s in samples)
    assert all(isinstance(s["output"], str) and "score" not in s for s in samples)


def test_chat_records_train_with_packing(tf_run, tiny_causal_lm_config, tiny_instruction_data):
    """Chat ``messages`` + packing through the whole run (the fixture config others build on)."""
    config = tiny_causal_lm_config
    folder = Path(tiny_instruction_data["train"]).parent
    config["data"].update({split: str(folder / f"chat_{split}.jsonl") for split in ("train", "validation", "test")})
    config["task"]["packing"] = True
    config["training"]["max_steps"] = 8
    config["evaluation"] = {"strategy": "no"}
    results, run_dir = tf_run(config)
    assert results["steps"] == 8 and results["test"]["eval_tokens"] > 0
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [x["loss"] for x in lines if x["split"] == "train"]
    assert train[-1] < train[0]


# -- generations scored on validation and test ---------------------------------------------------


def test_scored_features_carry_references_and_the_training_prompt(tiny_llama, tokenizer):
    task = make_task(tiny_llama, generation={"scorers": ["exact_match"], "references_field": None})
    messages = [{"role": "user", "content": "good"}, {"role": "assistant", "content": "bad"},
                {"role": "user", "content": "sun"}, {"role": "assistant", "content": "rain"}]
    chat, plain = task.encode([{"messages": messages}, {"prompt": "fun", "response": " boring "}], tokenizer, "validation")
    # generation continues exactly the tokens training saw before the last assistant turn
    prompt = tokenizer.decode(chat["input_ids"][: chat["prompt_length"]])
    assert prompt == tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert chat["references"] == ["rain"] and plain["references"] == ["boring"]
    assert chat["sample"] == plain["sample"] == 1
    assert "references" not in task.collate([chat, plain], tokenizer)  # metadata, not a model input
    several = make_task(tiny_llama, generation={"scorers": ["rouge"], "references_field": "tldrs"})
    [feat] = several.encode([{"prompt": "a", "response": "b", "tldrs": ["one", "two"]}], tokenizer, "test")
    assert feat["references"] == ["one", "two"]
    with pytest.raises(DataError, match="record 1: field 'tldrs' must hold a non-empty reference string"):
        several.encode([{"prompt": "a", "response": "b", "tldrs": []}], tokenizer, "test")
    labelled = make_task(tiny_llama, generation={"scorers": ["accuracy"], "labels": ["bad", "rain"]})
    with pytest.raises(DataError, match=r"record 1: reference 'sun' is not in task\.generation\.labels"):
        labelled.encode([{"prompt": "a", "response": "sun"}], tokenizer, "validation")


def test_batched_left_padded_generation_equals_one_by_one(tiny_llama, tokenizer):
    task = make_task(tiny_llama, max_new_tokens=5, generation={"scorers": ["exact_match"]})
    records = [{"prompt": "good", "response": "bad"}, {"prompt": "what is the opposite of sun and fun", "response": "x"},
               {"prompt": "yes this", "response": "no that"}]
    feats = task.encode(records, tokenizer, "validation")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        batched = task.evaluation_step(model, task.collate(feats, tokenizer))["generated"]
        for i, f in enumerate(feats):
            alone = task.evaluation_step(model, task.collate([f], tokenizer))["generated"][0]
            assert batched[i, : len(alone)].tolist() == alone.tolist()
        beams = make_task(tiny_llama, max_new_tokens=5, generation={"scorers": ["exact_match"], "num_beams": 2})
        beamed = beams.evaluation_step(model, beams.collate(beams.encode(records, tokenizer, "test"), tokenizer))
        assert beamed["generated"].shape[0] == 3


class ReplyLength:
    """A plugin metric: mean characters of the generated replies (``metric_inputs`` feeds it)."""

    @hookimpl
    def tf_register_metrics(self, register):
        register("reply_chars", lambda predictions, references: sum(map(len, predictions)) / len(predictions))


def test_generation_scored_run_selects_on_rouge(tf_run, tiny_causal_lm_config):
    config = tiny_causal_lm_config
    config["task"].update(max_new_tokens=6, generation={"scorers": ["exact_match", "accuracy", "rouge", "squad",
                                                                   "chrf", "bleu"]})
    config["evaluation"].update(metric="rougeLsum", extra_metrics=["reply_chars"])
    results, run_dir = tf_run(config, plugins=[ReplyLength()])
    names = {"perplexity", "exact_match", "accuracy", "unparseable", "rouge1", "rouge2", "rougeLsum",
             "squad_exact_match", "squad_f1", "chrf", "bleu", "distinct_fraction", "reply_chars"}
    assert names <= set(results["test"]) and names <= set(results["validation"])
    assert json.loads((run_dir / "results.json").read_text())["metric"] == "rougeLsum"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if x["split"] == "validation"]
    assert len(val) == 2 and results["best_metric"] == max(x["rougeLsum"] for x in val)  # greater is better
    for split, n in (("validation", 16), ("test", 16)):
        rows = [json.loads(x) for x in (run_dir / "reports" / f"{split}_generations.jsonl").read_text().splitlines()]
        assert len(rows) == n
        assert all(set(r) == {"prompt", "reference", "output", "score"} for r in rows)
        assert rows[0]["prompt"].startswith("<|user|>") and rows[0]["prompt"].endswith("<|assistant|>\n")
        assert set(rows[0]["score"]) == names - {"perplexity", "distinct_fraction", "reply_chars"}
    outputs = [r["output"] for r in rows]
    assert results["test"]["reply_chars"] == pytest.approx(sum(map(len, outputs)) / len(outputs))
    assert results["test"]["exact_match"] == pytest.approx(sum(r["score"]["exact_match"] for r in rows) / len(rows))
    assert results["test"]["distinct_fraction"] == pytest.approx(len(set(outputs)) / len(outputs))


def test_early_stopping_on_a_generation_metric(tf_run, tiny_causal_lm_config):
    config = tiny_causal_lm_config
    config["task"].update(max_new_tokens=3, generation={"scorers": ["accuracy"]})
    config["data"].pop("test")
    config["evaluation"].update(metric="unparseable", every_n_steps=5, early_stopping_patience=1,
                                early_stopping_min_delta=2.0)  # no change of a fraction is that large
    results, _ = tf_run(config)
    assert results["status"] == "early_stopped" and results["steps"] == 10 and results["best_step"] == 5
    assert CausalLMTask.metric_greater_is_better("rougeLsum") and not CausalLMTask.metric_greater_is_better("unparseable")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task.generation.scorers": ["rogue"]},
         "'task.generation.scorers': no scorer named 'rogue' (did you mean 'rouge'?); valid scorers: exact_match, "
         "accuracy, rouge, squad, chrf, bleu"),
        ({"evaluation.metric": "rougeL"}, "task 'causal_lm' does not produce 'rougeL' (did you mean 'rouge"),
        ({"evaluation.metric": "squad_f1"},
         "evaluation.metric: 'squad_f1' is a score of the generation scorer 'squad'; add it to task.generation.scorers"),
    ],
)
def test_bad_generation_config_fails_before_training(tf_run, tiny_causal_lm_config, changes, message):
    config = tiny_causal_lm_config
    for key, value in changes.items():
        section, _, rest = key.partition(".")
        if rest.startswith("generation."):
            config[section]["generation"] = {rest.split(".")[1]: value}
        else:
            config[section][rest] = value
    with pytest.raises(ConfigError) as err:
        tf_run(config)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (Path(config["output"]["dir"]) / "checkpoints").exists()


def test_prompt_format_builds_prompts_from_record_fields(tiny_llama, tokenizer):
    """A data set is used as it is: the prompt comes from its fields, a list response trains on
    the first reference and is scored against all of them."""
    task = make_task(tiny_llama, use_chat_template="never", prompt_template="{prompt}\n",
                     prompt_format="Summarise: {source}", response_field="target",
                     generation={"scorers": ["rouge"]})
    record = {"source": ["First sentence.", "Second one."], "target": ["tldr one", "tldr two"]}
    [train] = task.encode([record], tokenizer, "train")
    n = len(tokenizer("Summarise: First sentence. Second one.\n")["input_ids"])
    assert train["input_ids"][:n] == tokenizer("Summarise: First sentence. Second one.\n")["input_ids"]
    assert trained_text(tokenizer, train) == "tldr one</s>"
    [val] = task.encode([record], tokenizer, "validation")
    assert val["references"] == ["tldr one", "tldr two"] and val["prompt_length"] == n
    with pytest.raises(DataError, match=r"record 1: task\.prompt_format names field 'source'"):
        task.encode([{"text": "x", "target": "y"}], tokenizer, "train")
    intents = make_task(tiny_llama, prompt_format="Intent of: {text}", response_field="label")
    intents.prepare([{"text": "play", "label": "PlayMusic"}])  # no 'prompt' field needed
    [feat] = intents.encode([{"text": "play", "label": "PlayMusic"}], tokenizer, "train")
    assert "Intent of: play" in tokenizer.decode(feat["input_ids"])
