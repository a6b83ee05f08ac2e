"""The built-in scorers of generated text, against values counted by hand."""

from __future__ import annotations

import pytest
import sacrebleu

from tuneforge.plugins.generation_scorers import (
    SCORERS,
    accuracy,
    bleu,
    chrf,
    exact_match,
    get_scorer,
    parse_label,
    rouge,
    squad,
)


def test_exact_match_ignores_whitespace_but_not_case():
    preds = ["bad and rain", "  bad   and rain ", "Bad and rain"]
    assert exact_match(preds, [["bad and rain"]] * 3) == {"exact_match": pytest.approx(2 / 3)}
    assert exact_match(["b"], [["a", "b"]]) == {"exact_match": 1.0}  # any reference


def test_parse_label():
    labels = ["PlayMusic", "GetWeather", "play", "play music"]
    assert parse_label("PlayMusic", labels) == "PlayMusic"
    assert parse_label("The intent is GetWeather.", labels) == "GetWeather"
    assert parse_label("  playmusic!", labels) == "PlayMusic"
    assert parse_label("please play music now", labels) == "play music"  # 'play' is inside it
    assert parse_label("PlayMusic or GetWeather", labels) is None  # two unrelated labels
    assert parse_label("no idea", labels) is None
    assert parse_label("getweatherly", labels) is None  # whole words only


def test_accuracy_counts_unparseable_outputs_as_wrong():
    labels = ["PlayMusic", "BookRestaurant", "GetWeather"]
    preds = ["PlayMusic", "The intent is GetWeather.", "no idea", "PlayMusic or GetWeather", "BookRestaurant"]
    refs = [["PlayMusic"], ["GetWeather"], ["BookRestaurant"], ["GetWeather"], ["PlayMusic"]]
    # right: 1st, 2nd; unparseable: 3rd, 4th; parsed but wrong: 5th
    assert accuracy(preds, refs, labels) == {"accuracy": pytest.approx(2 / 5), "unparseable": pytest.approx(2 / 5)}
    # without a label set the distinct references are the labels
    assert accuracy(preds, refs) == {"accuracy": pytest.approx(2 / 5), "unparseable": pytest.approx(2 / 5)}
    assert accuracy(["GetWeather"], [["PlayMusic"]]) == {"accuracy": 0.0, "unparseable": 1.0}  # not a known label


def test_rouge_counted_by_hand():
    # 'the cat sat' vs 'the cat sat on the mat': 3 of 3 unigrams match, 3 of 6 recalled -> F1 = 2/3;
    # bigrams 'the cat', 'cat sat' match 2 of 5 -> P 1, R 0.4, F1 = 0.8 / 1.4; LCS = 3 -> Lsum = 2/3.
    m = rouge(["the cat sat"], [["a dog ran", "the cat sat on the mat"]])  # the best reference counts
    assert m["rouge1"] == pytest.approx(2 / 3)
    assert m["rouge2"] == pytest.approx(0.8 / 1.4)
    assert m["rougeLsum"] == pytest.approx(2 / 3)
    # Lsum matches sentence by sentence (newlines): swapped sentences still match fully
    assert rouge(["a b. c d."], [["c d. a b."]])["rougeLsum"] == pytest.approx(1.0)


def test_squad_em_f1_on_three_pairs():
    preds = ["the Eiffel Tower.", "in Paris, France", "a big red dog"]
    refs = [["Eiffel tower"], ["Paris"], ["cat", "red dog barks"]]
    # EM: 1, 0, 0. F1: 1; [in paris france] vs [paris] P 1/3 R 1 -> 1/2; [big red dog] vs [red dog barks] -> 2/3
    m = squad(preds, refs)
    assert m["squad_exact_match"] == pytest.approx(100 / 3)
    assert m["squad_f1"] == pytest.approx(100 * (1 + 1 / 2 + 2 / 3) / 3)


def test_chrf_and_bleu_equal_sacrebleu_corpus_calls():
    preds = ["the cat sat on the mat", "a dog barked loudly at night", "hello"]
    refs = [["the cat sat on a mat"], ["the dog barked at night", "a dog barked loudly"], ["hello there"]]
    streams = [[r[0] for r in refs], [None, "a dog barked loudly", None]]  # variable number of references
    assert chrf(preds, refs)["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, streams).score)
    assert bleu(preds, refs)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score)
    assert bleu(["the cat sat on the mat"], [["a dog", "the cat sat on the mat"]])["bleu"] == pytest.approx(100.0)
    assert chrf(["the cat sat on the mat"], [["the cat sat on the mat"]])["chrf"] == pytest.approx(100.0)
    assert chrf(["xyz"], [["abc"]])["chrf"] == 0.0


def test_unknown_scorer_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"no scorer named 'rogue' \(did you mean 'rouge'\?\); valid scorers: "
                                         + ", ".join(SCORERS)):
        get_scorer("rogue")


def test_missing_sacrebleu_gives_an_install_hint(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sacrebleu" else real(name, *a))
    with pytest.raises(ValueError, match=r"scorer 'bleu' needs the sacrebleu package: pip install sacrebleu"):
        get_scorer("bleu")
