"""``tuneforge.lm``: logits only where labels are, with the loss and gradients of the full logits."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tuneforge.lm import label_window, mean_token_nll, next_token_logits, takes_logits_to_keep, token_nll

pytestmark = pytest.mark.usefixtures("tf_single_thread")


def batch_with_prompts(vocab: int) -> dict[str, torch.Tensor]:
    """Two rows of 12 tokens: prompts of 7 and 5 tokens (labels -100), replies after them, the
    second row right-padded by 2."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 12), generator=g)
    labels = ids.clone()
    labels[0, :7] = -100
    labels[1, :5] = -100
    labels[1, 10:] = -100
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_windowed_loss_and_gradients_equal_the_models_own_loss(tiny_llama: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    batch = batch_with_prompts(model.config.vocab_size)
    assert takes_logits_to_keep(model)
    assert label_window(model, batch["labels"]) == 12 - 5 + 1  # from the token before the earliest reply token

    reference = model(**batch, use_cache=False).loss
    reference.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    logits, targets = next_token_logits(model, inputs, batch["labels"])
    assert logits.shape[:2] == targets.shape == (2, 7)
    loss = mean_token_nll(logits, targets)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    for got, want in zip((p.grad for p in model.parameters()), expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

    full, full_targets = next_token_logits(model, inputs, batch["labels"], window=False)
    assert full.shape[1] == 11
    torch.testing.assert_close(token_nll(logits, targets).sum(1), token_nll(full, full_targets).sum(1),
                               atol=1e-5, rtol=1e-6)


def test_a_model_without_logits_to_keep_scores_every_position(tiny_llama: str) -> None:
    from transformers import AutoModelForCausalLM

    class Plain(torch.nn.Module):  # a forward without logits_to_keep
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    model = Plain(AutoModelForCausalLM.from_pretrained(tiny_llama).eval())
    batch = batch_with_prompts(model.inner.config.vocab_size)
    assert not takes_logits_to_keep(model) and label_window(model, batch["labels"]) is None
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logits, targets = next_token_logits(model, inputs, batch["labels"])
    assert logits.shape[1] == targets.shape[1] == 11
    with torch.no_grad():
        assert mean_token_nll(logits, targets).item() == pytest.approx(model.inner(**batch).loss.item(), abs=1e-6)


def test_no_window_without_labels_or_when_the_first_token_is_labelled(tiny_llama: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert label_window(model, torch.full((2, 6), -100)) is None
    labels = torch.full((2, 6), -100)
    labels[0, 1:] = 5  # scored from position 1: every logit is needed
    assert label_window(model, labels) is None
    labels[0, 1] = -100
    assert label_window(model, labels) == 5
