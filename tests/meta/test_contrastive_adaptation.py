"""Meta-test adaptation ``meta.eval.adaptation``: the default fine-tune (numbers pinned) and
contrastive adaptation (tuneforge.contrastive's losses and heads) on a tiny random BERT."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any, get_args

import pytest
import torch

from tuneforge.config import MetaEvalConfig, validate
from tuneforge.data import read_records
from tuneforge.errors import ConfigError
from tuneforge.meta.episodes import EpisodeSampler, LabelPool
from tuneforge.meta.learner import ContrastiveAdaptation, EpisodeLearner, ExampleStore
from tuneforge.meta.loops import meta_test
from tuneforge.meta.run import run_meta
from tuneforge.plugins.fewshot import FewShotOptions

SUPCON = ContrastiveAdaptation(loss="supcon", temperature=0.07)


@pytest.fixture(scope="module")
def keyword_episodes(tiny_bert: str, many_label_csv: str) -> tuple[EpisodeLearner, EpisodeSampler, torch.Tensor]:
    """The tiny BERT over the keyword data set (16 labels x 16 examples), 3-way 2-shot episodes
    with 2 queries per class, and the start (the pre-trained parameters)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    store, by_label = ExampleStore(), {}
    for record in read_records(many_label_csv):
        by_label.setdefault(record["category"], []).extend(store.add([record["text"]]))
    store.tokenize(tokenizer, 16)
    learner = EpisodeLearner(AutoModel.from_pretrained(tiny_bert), store, pad_token_id=tokenizer.pad_token_id or 0)
    sampler = EpisodeSampler([LabelPool("keywords", by_label)], ways=3, shots=2, query=2, seed=0)
    return learner, sampler, learner.flat()


def test_default_finetune_numbers_are_unchanged(keyword_episodes: Any) -> None:
    """Pinned before contrastive adaptation existed: the fine-tune path gives the same numbers."""
    learner, sampler, start = keyword_episodes
    episode = sampler.episode(0)
    head = learner.prototype_head(episode.support, episode.ways)
    assert learner.adapt(list(episode.support), head, steps=3, lr=1e-3) == pytest.approx(0.8543131, abs=1e-6)
    learner.load_flat(start)
    head = learner.prototype_head(episode.support, episode.ways)
    assert learner.adapt(list(episode.support), head, steps=3, lr=1e-3, batch_size=4,
                         rng=random.Random(1)) == pytest.approx(0.8942903, abs=1e-6)
    learner.load_flat(start)
    scores = meta_test(learner, start, sampler, 8, steps=2, lr=1e-2)
    assert scores.accuracies == pytest.approx([4 / 6, 4 / 6, 2 / 6, 4 / 6, 3 / 6, 2 / 6, 3 / 6, 3 / 6])
    assert torch.equal(learner.flat(), start)


@pytest.mark.parametrize(("loss", "after"), [("supcon", 1.0996), ("pairs", 1.1451)])
def test_contrastive_adaptation_lowers_the_support_supcon_loss(keyword_episodes: Any, loss: str, after: float) -> None:
    learner, sampler, start = keyword_episodes
    support = list(sampler.episode(0).support)
    learner.load_flat(start)
    with torch.no_grad():
        before = float(learner.contrastive_loss(support, SUPCON))
    assert before == pytest.approx(2.2287, abs=1e-3)
    learner.adapt_contrastive(support, ContrastiveAdaptation(loss=loss), steps=10, lr=1e-2)  # type: ignore[arg-type]
    with torch.no_grad():
        adapted = float(learner.contrastive_loss(support, SUPCON))
    learner.load_flat(start)
    assert adapted == pytest.approx(after, abs=5e-3)
    # 2 shots seen twice: each anchor has 3 positives, so SupCon cannot go below ln 3
    assert math.log(3) - 1e-4 <= adapted < before - 1.0


@pytest.mark.parametrize("loss", ["supcon", "pairs"])
@pytest.mark.parametrize("head", ["prototype", "logistic"])
def test_contrastive_meta_test_scores_with_either_head(keyword_episodes: Any, loss: str, head: str) -> None:
    learner, sampler, start = keyword_episodes
    method = ContrastiveAdaptation(loss=loss, head=head)  # type: ignore[arg-type]
    scores = meta_test(learner, start, sampler, 4, steps=3, lr=1e-2, contrastive=method)
    assert len(scores.accuracies) == 4 and all(0.0 <= a <= 1.0 for a in scores.accuracies)
    assert torch.equal(learner.flat(), start)  # every episode adapts from the start, which is restored
    assert meta_test(learner, start, sampler, 4, steps=3, lr=1e-2, contrastive=method).accuracies == scores.accuracies


def test_one_shot_supcon_has_a_positive_for_every_anchor(keyword_episodes: Any) -> None:
    learner, _, start = keyword_episodes
    one_shot = EpisodeSampler(keyword_episodes[1].pools, ways=3, shots=1, query=2, seed=0)
    support = list(one_shot.episode(0).support)
    learner.load_flat(start)
    last = learner.adapt_contrastive(support, SUPCON, steps=2, lr=1e-2)
    learner.load_flat(start)
    assert math.isfinite(last) and last > 0


def test_zero_steps_prototype_head_equals_the_finetune_prototypes(keyword_episodes: Any) -> None:
    """With no adaptation the prototype head is the fine-tune's prototype-initialised head."""
    learner, sampler, start = keyword_episodes
    finetune = meta_test(learner, start, sampler, 8, steps=0, lr=1e-2)
    contrastive = meta_test(learner, start, sampler, 8, steps=0, lr=1e-2,
                            contrastive=ContrastiveAdaptation(head="prototype"))
    assert contrastive.accuracies == pytest.approx(finetune.accuracies, abs=1e-6)
    logistic = meta_test(learner, start, sampler, 8, steps=0, lr=1e-2, contrastive=ContrastiveAdaptation(head="logistic"))
    assert all(0.0 <= a <= 1.0 for a in logistic.accuracies)


def test_contrastive_meta_run_reports_every_setting(tiny_meta_config: dict[str, Any]) -> None:
    cfg = copy.deepcopy(tiny_meta_config)
    cfg["meta"].update({"meta_steps": 2, "multitask_steps": 2, "val_episodes": 0})
    cfg["meta"]["eval"].update({"adaptation": "contrastive", "contrastive_loss": "supcon", "temperature": 0.1,
                                "head": "logistic", "logistic_c": 10.0, "episodes": 4})
    results = run_meta(validate(cfg))
    assert set(results["meta_test"]) == {"3-way 1-shot", "3-way 2-shot"}
    for row in results["meta_test"].values():
        for start in ("meta", "pretrained", "multitask"):  # the baselines adapt the same way, on the same episodes
            assert row[start]["episodes"] == 4 and 0.0 <= row[start]["accuracy"] <= 1.0
        diff = row["meta_minus_pretrained"]["accuracy"]
        assert diff == pytest.approx(row["meta"]["accuracy"] - row["pretrained"]["accuracy"], abs=2e-4)
    assert results["fine_tune"] == {"steps": 2, "lr": 1e-3, "optimizer": "adam", "episodes": 4, "query_per_class": 2,
                                    "adaptation": "contrastive", "contrastive_loss": "supcon", "temperature": 0.1,
                                    "pairs_per_example": 1, "head": "logistic", "logistic_c": 10.0}
    assert Path(results["meta_start"]).is_dir()


def test_default_meta_run_numbers_are_unchanged(tiny_meta_config: dict[str, Any]) -> None:
    """The tiny run of tests/meta/conftest.py, pinned before contrastive adaptation existed."""
    results = run_meta(validate(tiny_meta_config))
    table = {setting: {start: (row[start]["accuracy"], row[start]["ci95"]) for start in ("meta", "pretrained", "multitask")}
             for setting, row in results["meta_test"].items()}
    assert table == {
        "3-way 1-shot": {"meta": (0.6944, 0.1311), "pretrained": (0.6944, 0.1559), "multitask": (0.6944, 0.1559)},
        "3-way 2-shot": {"meta": (0.6944, 0.1004), "pretrained": (0.6667, 0.1193), "multitask": (0.6944, 0.1004)},
    }
    assert results["meta_test"]["3-way 2-shot"]["meta_minus_pretrained"] == {"accuracy": 0.0278, "ci95": 0.0544}
    assert results["fine_tune"]["adaptation"] == "finetune" and "head" not in results["fine_tune"]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("adaptation", "contrastve", "'meta.eval.adaptation': Input should be 'finetune' or 'contrastive'"),
    ("contrastive_loss", "triplet", "'meta.eval.contrastive_loss': Input should be 'supcon' or 'pairs'"),
    ("head", "knn", "'meta.eval.head': Input should be 'prototype' or 'logistic'"),
    ("temperature", 0, "'meta.eval.temperature': Input should be greater than 0"),
    ("logistic_c", -1.0, "'meta.eval.logistic_c': Input should be greater than 0"),
])
def test_bad_contrastive_keys_name_the_key_and_the_choices(tiny_meta_config: dict[str, Any], key: str, value: Any,
                                                           message: str) -> None:
    cfg = copy.deepcopy(tiny_meta_config)
    cfg["meta"]["eval"][key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(cfg)


def test_meta_choices_are_the_fewshot_task_choices() -> None:
    """meta.eval's loss/head choices are those of task fewshot_classification (one implementation)."""
    meta, task = MetaEvalConfig.model_fields, FewShotOptions.model_fields
    assert set(get_args(meta["contrastive_loss"].annotation)) == set(get_args(task["loss"].annotation))
    assert set(get_args(meta["head"].annotation)) == set(get_args(task["head"].annotation))
    assert MetaEvalConfig().adaptation == "finetune"
    assert (MetaEvalConfig().temperature, MetaEvalConfig().logistic_c) == (FewShotOptions().temperature,
                                                                          FewShotOptions().logistic_c)


def test_a_checkpoint_from_before_the_contrastive_keys_resumes():
    from tuneforge.meta.checkpoints import upgraded
    from tuneforge.meta.config import MetaConfig

    current = {"seed": 0, "meta": MetaConfig().model_dump(mode="json")}
    old = {"seed": 0, "meta": {**current["meta"], "eval": dict(current["meta"]["eval"])}}
    for key in ("adaptation", "contrastive_loss", "temperature", "pairs_per_example", "head", "logistic_c"):
        del old["meta"]["eval"][key]  # written before these keys existed
    assert upgraded(old) == current
    changed = {**old, "meta": {**old["meta"], "ways": 3}}
    assert upgraded(changed)["meta"]["ways"] == 3 and upgraded(changed) != current  # a real change still shows
    assert upgraded({"meta": {"ways": "x"}}) == {"meta": {"ways": "x"}}  # invalid: left for the diff to name
