"""Summarization: field parsing, target encoding/masking, ROUGE against hand-computed values,
generation-based evaluation, and tiny end-to-end runs (warm-started BERT2BERT, BART)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoTokenizer

from tuneforge.config import validate
from tuneforge.errors import DataError
from tuneforge.plugins.summarization import SummarizationTask, join_text, references_of, rouge_scores

pytestmark = pytest.mark.usefixtures("tf_single_thread")
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

THINGS = ["movie", "film", "book", "song", "show", "music"]
ADJ = ["great", "awful", "good", "bad", "fun", "boring"]


def write_data(directory: Path, seed: int = 0) -> dict[str, str]:
    """SciTLDR-shaped records: source is a list of sentences, target a list of references."""
    import random

    rng = random.Random(seed)
    paths = {}
    for split, n, refs in (("train", 48, 1), ("validation", 12, 2), ("test", 12, 2)):
        rows = []
        for _ in range(n):
            a, b = rng.choice(THINGS), rng.choice(ADJ)
            source = [f"this {a} is very {b} .", f"i {rng.choice(['love', 'hate'])} it with my {rng.choice(THINGS)} ."]
            target = [f"{a} is {b}"] + ([f"the {a} is {b}"] if refs > 1 else [])
            rows.append({"source": source, "target": target})
        path = directory / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[split] = str(path)
    return paths


def make_task(model_dir: str, data: dict | None = None, **options) -> SummarizationTask:
    cfg = validate({
        "model": {"name_or_path": model_dir},
        "task": {"name": "summarization", **options},
        "data": {"train": "train.jsonl", "validation": "dev.jsonl", "max_length": 32, **(data or {})},
    })
    return SummarizationTask(SummarizationTask.parse_options(cfg.task.options()), cfg)


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return AutoTokenizer.from_pretrained(tiny_bert)


@pytest.fixture(scope="module")
def tiny_bart(tiny_bert, tmp_path_factory) -> str:
    """A tiny random BART (an AutoModelForSeq2SeqLM) sharing the tiny BERT tokenizer."""
    from transformers import BartConfig, BartForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
        decoder_start_token_id=tok.sep_token_id, forced_eos_token_id=None,
    )
    directory = tmp_path_factory.mktemp("tiny-bart")
    BartForConditionalGeneration(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


# -- parsing ---------------------------------------------------------------------------------


def test_join_text_and_references():
    assert join_text(["First one.", " Second. "], " ", "f", "source") == "First one. Second."
    assert join_text("plain", " ", "f", "source") == "plain"
    assert references_of("a tldr", "f", "target") == ["a tldr"]
    assert references_of([" one ", "two"], "f", "target") == ["one", "two"]
    with pytest.raises(DataError, match=r"f: field 'source' must be a string or a list of strings"):
        join_text(["ok", 3], " ", "f", "source")
    with pytest.raises(DataError, match="f: field 'source' is empty"):
        join_text([], " ", "f", "source")
    with pytest.raises(DataError, match="f: field 'target' must be a non-empty string or a non-empty list"):
        references_of([], "f", "target")
    with pytest.raises(DataError, match="field 'target' must be a non-empty string"):
        references_of(["fine", ""], "f", "target")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"source": "text"}, "dev.jsonl, record 2: missing field 'target'"),
        ({"source": "text", "target": []}, "dev.jsonl, record 2: field 'target' must be a non-empty"),
        ({"source": [1, 2], "target": "t"}, "dev.jsonl, record 2: field 'source' must be a string or a list"),
        ({"source": "   ", "target": "t"}, "dev.jsonl, record 2: field 'source' is empty"),
    ],
)
def test_bad_records_name_file_record_and_field(tiny_bert, tokenizer, record, message):
    task = make_task(tiny_bert)
    with pytest.raises(DataError) as err:
        task.encode([{"source": ["a b."], "target": ["a"]}, record], tokenizer, "validation")
    assert message in str(err.value)


# -- features ----------------------------------------------------------------------------------


def test_warm_start_targets_end_with_sep_and_eval_keeps_all_references(tiny_bert, tokenizer):
    task = make_task(tiny_bert)
    assert task.warm_start  # a BERT checkpoint is an encoder: warm-start an EncoderDecoderModel
    records = [{"source": ["this movie is good .", "i love it ."], "target": ["movie is good", "the movie is good"]}]
    [train] = task.encode(records, tokenizer, "train")
    assert tokenizer.decode(train["input_ids"]) == "[CLS] this movie is good. i love it. [SEP]"
    assert train["labels"] == tokenizer("movie is good", add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    assert "references" not in train
    [dev] = task.encode(records, tokenizer, "validation")
    assert dev["references"] == ["movie is good", "the movie is good"]
    assert dev["labels"] == train["labels"]  # eval loss on the first reference


def test_train_targets_each_makes_one_example_per_reference(tiny_bert, tokenizer):
    records = [{"source": "a b", "target": ["one", "two", "three"]}, {"source": "c", "target": "four"}]
    first = make_task(tiny_bert).encode(records, tokenizer, "train")
    each = make_task(tiny_bert, train_targets="each").encode(records, tokenizer, "train")
    assert len(first) == 2 and len(each) == 4
    assert [tokenizer.decode(f["labels"][:-1]) for f in each] == ["one", "two", "three", "four"]
    assert len(make_task(tiny_bert, train_targets="each").encode(records, tokenizer, "validation")) == 2


def test_truncation_lengths_and_counts(tiny_bert, tokenizer, caplog):
    task = make_task(tiny_bert, max_source_length=10, max_target_length=5)
    records = [{"source": "good " * 20, "target": "bad " * 20}, {"source": "good", "target": "bad"}]
    with caplog.at_level(logging.INFO):
        feats = task.encode(records, tokenizer, "train")
    assert len(feats[0]["input_ids"]) == 10 and len(feats[0]["labels"]) == 5
    assert feats[0]["labels"][-1] == tokenizer.sep_token_id
    assert "1 of 2 sources truncated to 10 tokens" in caplog.text
    assert "1 of 2 targets truncated to 5 tokens" in caplog.text


def test_source_prefix_and_seq2seq_targets(tiny_bart, tokenizer):
    task = make_task(tiny_bart, source_prefix="summarize: ")
    assert not task.warm_start  # BART is an encoder-decoder: AutoModelForSeq2SeqLM
    [feat] = task.encode([{"source": "good movie", "target": "bad"}], tokenizer, "train")
    assert tokenizer.decode(feat["input_ids"], skip_special_tokens=True).startswith("summarize")
    assert feat["labels"] == tokenizer(text_target="bad")["input_ids"]  # the tokenizer's own convention


def test_collate_masks_label_padding_and_drops_references(tiny_bert, tokenizer):
    task = make_task(tiny_bert)
    feats = task.encode([{"source": "a", "target": "good"}, {"source": "b c d", "target": "good bad movie"}],
                        tokenizer, "validation")
    batch = task.collate(feats, tokenizer)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # no token_type_ids (BART has none)
    n = len(feats[0]["labels"])
    assert (batch["labels"][0, n:] == -100).all() and batch["labels"].shape[1] == len(feats[1]["labels"])


# -- metrics ---------------------------------------------------------------------------------------


def test_rouge_matches_hand_computed_values():
    # pred "the cat sat" vs ref "the cat sat on the mat": unigrams P=3/3 R=3/6 -> F=2/3;
    # bigrams P=2/2 R=2/5 -> F=4/7
    m = rouge_scores(["the cat sat"], [["the cat sat on the mat"]], use_stemmer=False)
    assert m["rouge1"] == pytest.approx(2 / 3) and m["rouge2"] == pytest.approx(4 / 7)
    assert m["rougeLsum"] == pytest.approx(2 / 3)
    # the best reference counts; averages over examples; an empty prediction scores 0
    m = rouge_scores(["the cat sat", ""], [["a dog ran", "the cat sat"], ["anything"]], use_stemmer=False)
    assert m["rouge1"] == pytest.approx(0.5) and m["rouge2"] == pytest.approx(0.5)
    # Lsum works on sentences: "b a. c d." vs "a b. c d.": union LCS per reference sentence
    m = rouge_scores(["b a. c d."], [["a b. c d."]], use_stemmer=False)
    assert m["rouge1"] == pytest.approx(1.0) and m["rougeLsum"] == pytest.approx(3 / 4)


def test_registered_rouge_metric(tf_plugin_manager):
    tf_plugin_manager.build_registries()
    rouge1 = tf_plugin_manager.metrics.get("rouge1")
    assert rouge1(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(2 / 3, abs=1e-6)


def test_evaluation_step_generates_with_the_unwrapped_model(tiny_bart, tokenizer):
    task = make_task(tiny_bart, max_new_tokens=5, num_beams=2)
    task.tokenizer = tokenizer
    model = task.build_model(tokenizer).eval()
    feats = task.encode([{"source": "good movie", "target": "bad"}, {"source": "a b c", "target": "x y"}],
                        tokenizer, "validation")
    wrapped = torch.nn.Module()
    wrapped.module = model  # what DDP / a DeepSpeed engine looks like from outside
    wrapped.forward = model.forward
    with torch.no_grad():
        out = task.evaluation_step(wrapped, task.collate(feats, tokenizer))
    assert out["generated"].shape[0] == 2 and out["generated"].shape[1] <= 6  # start token + 5 new
    assert out["loss"].shape == (2,) and torch.isfinite(out["loss"]).all()
    metrics = task.compute_metrics({k: v.numpy() for k, v in out.items()}, "validation", feats)
    assert set(metrics) == {"rouge1", "rouge2", "rougeLsum", "gen_words"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("rouge1", "rouge2", "rougeLsum"))
    assert len(task.predictions({"generated": out["generated"].numpy()}, feats, [])) == 2


# -- end to end ----------------------------------------------------------------------------------


def test_tiny_bert2bert_run_learns_and_reports(tf_run, tiny_bert, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

    config = yaml.safe_load((CONFIGS / "summarization-tiny.yaml").read_text())  # the shipped tiny settings
    config["model"]["name_or_path"] = tiny_bert
    config["data"].update(write_data(tmp_path))
    config["output"]["dir"] = str(tmp_path / "run")
    results, run_dir = tf_run(config)
    assert results["status"] == "completed" and results["metric"] == "rougeLsum"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [x["loss"] for x in lines if x["split"] == "train"]
    assert np.mean(train[-4:]) < np.mean(train[:4]) * 0.8
    assert 0.0 <= results["test"]["rouge1"] <= 1.0 and results["test"]["loss"] < train[0]
    samples = [json.loads(x) for x in (run_dir / "reports" / "test_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and all(len(s["references"]) == 2 for s in samples)
    assert len((run_dir / "reports" / "test_predictions.txt").read_text().splitlines()) == 12
    # the export reloads as a seq2seq model, and `auto` no longer warm-starts from it
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "model")
    assert isinstance(reloaded, EncoderDecoderModel)
    assert reloaded.generation_config.decoder_start_token_id == AutoTokenizer.from_pretrained(tiny_bert).cls_token_id
    assert not make_task(str(run_dir / "model")).warm_start


def test_lora_on_a_warm_started_encoder_decoder_trains_and_saves_its_new_cross_attention(tf_run, tiny_bert, tmp_path):
    """BERT2BERT's cross-attention is not in either checkpoint: LoRA must train it fully and save it
    with the adapter, or a reload of base + adapter draws other random weights."""
    from tuneforge.inference import compute_metrics, infer, load

    config = yaml.safe_load((CONFIGS / "summarization-tiny.yaml").read_text())
    config["model"]["name_or_path"] = tiny_bert
    config["data"].update(write_data(tmp_path))
    config["output"]["dir"] = str(tmp_path / "run")
    config["adapter"] = {"type": "lora", "r": 4}
    results, run_dir = tf_run(config)
    saved = json.loads((run_dir / "model" / "adapter_config.json").read_text())["modules_to_save"]
    layers = AutoConfig.from_pretrained(tiny_bert).num_hidden_layers
    assert sorted(m for m in saved if m.endswith("crossattention")) == sorted(
        f"decoder.bert.encoder.layer.{i}.crossattention" for i in range(layers))
    assert not any("embeddings" in m for m in saved)
    params = json.loads((run_dir / "params.json").read_text())["parameters"]
    assert 0.0 < params["trainable_fraction"] < 0.5
    trained = load(run=run_dir)  # base model + the adapter saved in run/model
    records = trained.task.read(config["data"]["test"], "test")[:16]
    features, outputs = infer(trained, records, "test")
    assert compute_metrics(trained, outputs, "test", features)["loss"] == pytest.approx(results["test"]["loss"], rel=1e-5)
