"""The preference task: records, options, the four losses against TRL, the reference model,
and a tiny end-to-end LoRA DPO run."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tuneforge.config import resolve_paths, validate
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.preference import PreferenceTask
from tuneforge.testing.pytest_plugin import OPPOSITES

pytestmark = pytest.mark.usefixtures("tf_single_thread")
REPO = Path(__file__).resolve().parents[2]


def make_preference_data(directory: Path, n_train: int = 48, n_eval: int = 16, seed: int = 0) -> dict[str, str]:
    """Pairs whose chosen reply is the opposite of the prompt's words, the rejected one the words
    themselves; every other record is in the chat layout (message lists)."""
    rng = random.Random(seed)
    words = sorted(OPPOSITES)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        rows = []
        for i in range(n):
            a, b = rng.choice(words), rng.choice(words)
            prompt = f"what is the opposite of {a} and {b}"
            chosen, rejected = f"{OPPOSITES[a]} and {OPPOSITES[b]}", f"{a} and {b}"
            if i % 2:
                rows.append({"prompt": [{"role": "user", "content": prompt}],
                             "chosen": [{"role": "assistant", "content": chosen}],
                             "rejected": [{"role": "assistant", "content": rejected}]})
            else:
                rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        path = directory / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[split] = str(path)
    return paths


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_preference_data(tmp_path_factory.mktemp("pref-data"))


def make_config(model: str, data: dict[str, str], tmp_path: Path, **task: Any) -> dict[str, Any]:
    return {
        "model": {"name_or_path": model},
        "task": {"name": "preference", **task},
        "data": {**data, "max_length": 48},
        "training": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "seed": 0, "log_every_n_steps": 1},
        "evaluation": {"strategy": "steps", "every_n_steps": 4},
        "output": {"dir": str(tmp_path / "run"), "keep_last": 1},
    }


def make_task(config: dict[str, Any]) -> PreferenceTask:
    cfg = validate(config)
    return PreferenceTask(PreferenceTask.parse_options(cfg.task.options()), cfg)


def batch_of(task: PreferenceTask, data: dict[str, str], n: int = 4) -> tuple[dict[str, torch.Tensor], Any]:
    tokenizer = task.load_tokenizer()
    records = task.read(data["train"], "train")[:n]
    feats = task.encode(records, tokenizer, "train")
    return task.collate(feats, tokenizer), tokenizer


def perturbed(model_dir: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(policy, frozen reference): the policy's weights moved off the reference's, so the
    log-ratios and every loss term are far from their trivial values."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval().requires_grad_(False)
    policy = copy.deepcopy(reference).requires_grad_(True)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference


def grads_of(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return grads


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, g_ours: list[torch.Tensor], g_theirs: list[torch.Tensor],
                 name: str) -> None:
    """Loss and gradients equal to 1e-5; one line of the correctness table (``pytest -s -k trl``)."""
    assert len(g_ours) == len(g_theirs) > 0
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(g_ours, g_theirs))
    print(f"\nvs TRL | {name} | TRL {float(theirs):.8f} | ours {float(ours):.8f} | loss diff "
          f"{abs(float(ours) - float(theirs)):.1e} | max gradient diff {grad_diff:.1e}")
    assert abs(float(ours) - float(theirs)) <= 1e-5, (float(ours), float(theirs))
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def trl_args(cls: Any, tmp_path: Path, **kwargs: Any) -> Any:
    return cls(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, per_device_train_batch_size=2,
               max_length=64, **kwargs)


def trl_dataset() -> Any:
    from datasets import Dataset

    return Dataset.from_list([{"prompt": "what is the opposite of good", "chosen": "bad", "rejected": "good"}] * 2)


# -- the four losses against TRL ------------------------------------------------------------


@pytest.mark.parametrize(("loss", "label_smoothing"), [("dpo", 0.0), ("dpo", 0.2), ("ipo", 0.0)])
def test_dpo_and_ipo_match_trl(tiny_llama: str, pref_data: dict[str, str], tmp_path: Path, loss: str,
                               label_smoothing: float) -> None:
    """The loss and its gradients w.r.t. every policy parameter equal TRL 1.16's ``DPOTrainer._compute_loss``
    (full forward passes of policy and ``ref_model``, loss_type ``sigmoid`` / ``ipo``) on the same
    padded batch, to 1e-5. TRL 1.16's sigmoid loss has no label smoothing: conservative DPO is
    ``(1 - e) * sigmoid(chosen, rejected) + e * sigmoid(rejected, chosen)``, both TRL's."""
    from trl import DPOConfig, DPOTrainer

    task = make_task(make_config(tiny_llama, pref_data, tmp_path, loss=loss, beta=0.5, label_smoothing=label_smoothing,
                                 reference="copy"))
    batch, tokenizer = batch_of(task, pref_data)
    policy, reference = perturbed(tiny_llama)
    task.reference_model = reference
    out = task.pair_outputs(policy, batch)
    ours, g_ours = out["loss"].detach(), grads_of(policy, out["loss"])

    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(reference), processing_class=tokenizer,
                         train_dataset=trl_dataset(),
                         args=trl_args(DPOConfig, tmp_path, beta=0.5, loss_type=["ipo" if loss == "ipo" else "sigmoid"]))
    half = batch["input_ids"].shape[0] // 2

    def trl_loss(swap: bool) -> torch.Tensor:
        order = torch.cat([torch.arange(half, 2 * half), torch.arange(half)]) if swap else torch.arange(2 * half)
        inputs = {"input_ids": batch["input_ids"][order], "attention_mask": batch["attention_mask"][order],
                  "completion_mask": (batch["labels"][order] != -100).long()}
        return trainer._compute_loss(trainer.model, inputs, False)  # type: ignore[no-any-return]

    theirs = (1 - label_smoothing) * trl_loss(False)
    if label_smoothing:
        theirs = theirs + label_smoothing * trl_loss(True)
    assert_close(ours, theirs.detach(), g_ours, grads_of(trainer.model, theirs),
                 f"{loss} (label smoothing {label_smoothing})")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl(tiny_llama: str, pref_data: dict[str, str], tmp_path: Path, label_smoothing: float) -> None:
    """SimPO: loss and gradients equal TRL's ``CPOTrainer.get_batch_loss_metrics`` with
    ``loss_type='simpo'``, ``cpo_alpha=0`` (its SimPO setting; per-token averaged log-probs) on the same batch."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    task = make_task(make_config(tiny_llama, pref_data, tmp_path, loss="simpo", beta=2.0, simpo_gamma=0.7,
                                 label_smoothing=label_smoothing))
    batch, tokenizer = batch_of(task, pref_data)
    policy, _ = perturbed(tiny_llama)
    out = task.pair_outputs(policy, batch)
    ours, g_ours = out["loss"].detach(), grads_of(policy, out["loss"])

    trainer = CPOTrainer(model=policy, processing_class=tokenizer, train_dataset=trl_dataset(),
                         args=trl_args(CPOConfig, tmp_path, loss_type="simpo", cpo_alpha=0.0, beta=2.0,
                                       simpo_gamma=0.7, label_smoothing=label_smoothing))
    theirs, _ = trainer.get_batch_loss_metrics(trainer.model, split_batch(batch))
    assert_close(ours, theirs.detach(), g_ours, grads_of(trainer.model, theirs),
                 f"simpo (label smoothing {label_smoothing})")


def test_orpo_matches_trl(tiny_llama: str, pref_data: dict[str, str], tmp_path: Path) -> None:
    """ORPO: loss and gradients equal TRL's ``ORPOTrainer.get_batch_loss_metrics`` (NLL of the chosen
    sequence minus ``beta * mean log sigmoid(log odds ratio)`` of per-token averaged log-probs; TRL's
    ``beta`` is our ``orpo_lambda``). TRL's NLL covers prompt and reply, hence ``orpo_nll_on_prompt``."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    task = make_task(make_config(tiny_llama, pref_data, tmp_path, loss="orpo", orpo_lambda=0.3, orpo_nll_on_prompt=True))
    batch, tokenizer = batch_of(task, pref_data)
    policy, _ = perturbed(tiny_llama)
    out = task.pair_outputs(policy, batch)
    ours, g_ours = out["loss"].detach(), grads_of(policy, out["loss"])

    trainer = ORPOTrainer(model=policy, processing_class=tokenizer, train_dataset=trl_dataset(),
                          args=trl_args(ORPOConfig, tmp_path, beta=0.3))
    theirs, _ = trainer.get_batch_loss_metrics(trainer.model, split_batch(batch))
    assert_close(ours, theirs.detach(), g_ours, grads_of(trainer.model, theirs), "orpo")


def split_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``[chosen; rejected]`` batch in the chosen_*/rejected_* layout of TRL's CPO/ORPO trainers."""
    half = batch["input_ids"].shape[0] // 2
    out = {}
    for side, rows in (("chosen", slice(0, half)), ("rejected", slice(half, None))):
        for key in ("input_ids", "attention_mask", "labels"):
            out[f"{side}_{key}"] = batch[key][rows]
    return out


def test_reply_only_logits_give_the_full_log_probs_and_gradients(tiny_llama: str, pref_data: dict[str, str],
                                                                  tmp_path: Path) -> None:
    """The prompt's logits are not built (``logits_to_keep`` from the earliest reply token on), and
    the summed reply log-probs and their gradients are those of the full logits."""
    from tuneforge.lm import label_window

    task = make_task(make_config(tiny_llama, pref_data, tmp_path))
    batch, _ = batch_of(task, pref_data)
    policy, _ = perturbed(tiny_llama)
    policy.requires_grad_(True)
    width = batch["input_ids"].shape[1]
    keep = label_window(policy, batch["labels"])
    first = int((batch["labels"] != -100).int().argmax(1).min())
    assert keep == width - first + 1 < width
    results = []
    for reply_only in (True, False):
        policy.zero_grad()
        (c, r), tokens, logits = task.sequence_logps(policy, batch, reply_only=reply_only)
        assert logits.shape[1] == (keep if reply_only else width) - 1
        (c.sum() - 2 * r.sum()).backward()
        results.append((c.detach(), r.detach(), tokens, [p.grad.clone() for p in policy.parameters()]))
    (c1, r1, t1, g1), (c2, r2, t2, g2) = results
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r1, r2, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(t1, t2))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    no_reply = torch.full_like(batch["labels"], -100)
    assert label_window(policy, no_reply) is None


# -- the reference model ---------------------------------------------------------------------


def test_disabled_adapter_reference_equals_a_frozen_copy(tiny_llama: str, pref_data: dict[str, str], tmp_path: Path) -> None:
    """With LoRA, the reference (the policy with its adapter disabled) gives the same log-probs as a
    separate frozen copy of the base model, after the adapter has moved off zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = make_config(tiny_llama, pref_data, tmp_path, reference="adapter")
    config["adapter"] = {"type": "lora", "r": 4}
    task = make_task(config)
    batch, _ = batch_of(task, pref_data)
    copy_model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False))
    policy.eval()
    disabled = task.reference_logps(policy, batch)
    task.reference_model, task.reference_mode = copy_model, "copy"
    copied = task.reference_logps(policy, batch)
    for a, b in zip(disabled, copied):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with torch.no_grad():
        (adapted, _), _, _ = task.sequence_logps(policy, batch)
    assert not torch.allclose(adapted, disabled[0])  # the adapter is really on outside the context


def test_frozen_copy_stays_fixed_and_precomputed_agrees(tf_run: Any, tiny_llama: str, pref_data: dict[str, str],
                                                        tmp_path: Path) -> None:
    """Full fine-tuning with a frozen copy: after training steps the copy's parameters are
    bit-identical to the pretrained weights, while the policy moved; precomputed reference
    log-probs (from the initial weights, no copy) give the same validation metrics."""
    from transformers import AutoModelForCausalLM

    seen: dict[str, Any] = {}

    class Spy:
        from tuneforge import hookimpl

        @hookimpl
        def tf_on_fit_end(self, run: Any, result: Any) -> None:
            seen["reference"] = {k: v.detach().clone() for k, v in run.task.reference_model.state_dict().items()}
            seen["policy"] = {k: v.detach().clone() for k, v in run.runtime.unwrap(run.model).state_dict().items()}

    config = make_config(tiny_llama, pref_data, tmp_path, reference="copy")
    results, _ = tf_run(config, plugins=[Spy()])
    pretrained = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    assert all(torch.equal(seen["reference"][k], v) for k, v in pretrained.items())
    assert any(not torch.equal(seen["policy"][k], v) for k, v in pretrained.items())
    precomputed, _ = tf_run(config, overrides=["task.reference=precomputed", f"output.dir={tmp_path / 'pre'}"])
    for key in ("reward_accuracy", "reward_margin", "loss"):
        assert precomputed["validation"][key] == pytest.approx(results["validation"][key], abs=1e-5)


def test_tiny_config_lora_dpo_run_raises_reward_accuracy(tf_run: Any, tiny_llama: str, tmp_path: Path) -> None:
    """configs/preference-tiny.yaml (shipped pairs, LoRA, reference: the disabled adapter) on the tiny
    random Llama: at step 0 every reward is exactly 0 (the adapter starts at zero), so reward accuracy
    is 0; after training most training pairs prefer the chosen reply."""
    raw = yaml.safe_load((REPO / "configs" / "preference-tiny.yaml").read_text())
    resolve_paths(raw, REPO / "configs")
    raw["model"]["name_or_path"] = tiny_llama
    raw["output"]["dir"] = str(tmp_path / "run")
    results, run_dir = tf_run(raw)
    assert results["status"] == "completed" and results["metric"] == "reward_accuracy"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    accuracy = [x["reward_accuracy"] for x in lines if x["split"] == "validation"]
    assert len(accuracy) == 2 and accuracy[-1] >= 0.75 and accuracy[-1] >= accuracy[0]
    assert results["validation"]["reward_margin"] > 0
    assert results["test"]["reward_accuracy"] > 0.5
    assert (run_dir / "model" / "adapter_config.json").is_file()


# -- records and options ---------------------------------------------------------------------


def test_record_layouts_render_like_causal_lm(tiny_llama: str, pref_data: dict[str, str], tmp_path: Path) -> None:
    """String pairs, message lists and UltraFeedback's full conversations encode the same pair to
    the same tokens; only the final reply is labelled (earlier assistant turns are context)."""
    task = make_task(make_config(tiny_llama, pref_data, tmp_path))
    tok = task.load_tokenizer()
    user = {"role": "user", "content": "what is the opposite of good"}
    layouts = [
        {"prompt": "what is the opposite of good", "chosen": "bad", "rejected": "good"},
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "bad"}],
         "rejected": [{"role": "assistant", "content": "good"}]},
        {"prompt": "what is the opposite of good", "chosen": [user, {"role": "assistant", "content": "bad"}],
         "rejected": [user, {"role": "assistant", "content": "good"}]},
        {"chosen": [user, {"role": "assistant", "content": "bad"}], "rejected": [user, {"role": "assistant", "content": "good"}]},
        {"messages": [user], "chosen": "bad", "rejected": "good"},
    ]
    feats = task.encode(layouts, tok, "validation")
    assert all(f == feats[0] for f in feats)
    reply = [t for t in feats[0]["chosen_labels"] if t != -100]
    assert tok.decode(reply).startswith("bad")
    short = {"role": "user", "content": "good"}
    multi = {"messages": [short, {"role": "assistant", "content": "sad"}, short], "chosen": "bad", "rejected": "good"}
    (feat,) = task.encode([multi], tok, "validation")
    assert [t for t in feat["chosen_labels"] if t != -100] == reply


@pytest.mark.parametrize(("record", "message"), [
    ({"prompt": "p", "rejected": "r"}, "field 'chosen' must be a string or a non-empty list"),
    ({"prompt": "p", "chosen": "", "rejected": "r"}, "field 'chosen' is empty"),
    ({"prompt": "p", "chosen": "c", "rejected": 3}, "field 'rejected' must be a string"),
    ({"chosen": "c", "rejected": "r"}, "needs a 'prompt'"),
])
def test_bad_records_name_file_line_and_field(tiny_llama: str, tmp_path: Path, record: dict[str, Any], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n" + json.dumps(record) + "\n")
    task = make_task(make_config(tiny_llama, {"train": str(path)}, tmp_path))
    with pytest.raises(DataError, match=message) as err:
        task.encode(task.read(str(path), "train"), task.load_tokenizer(), "train")
    assert "bad.jsonl" in str(err.value) and "line 2" in str(err.value)


@pytest.mark.parametrize(("task_options", "adapter", "message"), [
    ({"loss": "dpo", "reference": "none"}, False, "needs a reference model"),
    ({"loss": "ipo", "reference": "adapter"}, False, "needs an adapter: section"),
    ({"loss": "orpo", "reference": "copy"}, False, "uses no reference model"),
    ({"loss": "ipo", "label_smoothing": 0.1}, False, "applies to loss dpo or simpo"),
    ({"packing": True}, True, "keeps each chosen/rejected pair whole"),
    ({"train_on_prompt": True}, True, "orpo_nll_on_prompt"),
])
def test_invalid_option_combinations_are_one_line_config_errors(tiny_llama: str, pref_data: dict[str, str], tmp_path: Path,
                                                               task_options: dict[str, Any], adapter: bool, message: str) -> None:
    config = make_config(tiny_llama, pref_data, tmp_path, **task_options)
    if adapter:
        config["adapter"] = {"type": "lora"}
    with pytest.raises(ConfigError, match=message) as err:
        make_task(config)
    assert "\n" not in str(err.value)


def test_reference_resolution(tiny_llama: str, pref_data: dict[str, str], tmp_path: Path) -> None:
    assert make_task(make_config(tiny_llama, pref_data, tmp_path)).reference_mode == "copy"
    assert make_task(make_config(tiny_llama, pref_data, tmp_path, loss="simpo")).reference_mode == "none"
    with_lora = make_config(tiny_llama, pref_data, tmp_path)
    with_lora["adapter"] = {"type": "lora"}
    assert make_task(with_lora).reference_mode == "adapter"


# -- evaluation of a trained run ----------------------------------------------------------------


@pytest.mark.parametrize("reference", ["copy", "precomputed"])
def test_evaluate_a_full_fine_tune_reproduces_its_test_rewards(tf_run: Any, tiny_llama: str, pref_data: dict[str, str],
                                                               tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               reference: str) -> None:
    """``tuneforge evaluate --run`` on a full fine-tune whose reference is the pretrained model
    (a frozen copy, or precomputed from the initial weights) used to raise: Task.setup, which
    builds the copy, runs only in ``tuneforge train``, and the reloaded task's model.name_or_path
    is the trained model. The task state names the pretrained model, so evaluate loads it as the
    reference and reports the run's own test rewards."""
    from tuneforge.cli import main

    results, run_dir = tf_run(make_config(tiny_llama, pref_data, tmp_path, reference=reference, beta=0.5))
    assert json.loads((run_dir / "model" / "task_state.json").read_text())["reference_model"]["name_or_path"] == tiny_llama
    assert results["test"]["reward_margin"] != 0  # the policy moved off the reference
    assert main(["evaluate", "--run", str(run_dir)]) == 0, capsys.readouterr().err
    saved = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())["metrics"]
    for key in ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "loss"):
        assert saved[key] == pytest.approx(results["test"][key], abs=1e-5), key
    assert "distinct_fraction" not in saved and not (run_dir / "reports").exists()  # no scorers: no generation


# -- generation scorers ---------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def chosen_text(record: dict[str, Any]) -> str:
    chosen = record["chosen"]
    return chosen if isinstance(chosen, str) else chosen[-1]["content"]


def test_generation_scorers_score_replies_against_the_chosen_one(tf_run: Any, tiny_llama: str, pref_data: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """With ``task.generation.scorers`` a preference run generates a greedy reply to every pair's
    prompt on validation and test, scores it against the chosen reply beside the rewards, writes
    ``reports/{split}_generations.jsonl`` (one row per pair) and selects on ``rougeLsum``. The test
    replies are the exported model's own greedy continuations of the chat-template prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.plugins.generation_scorers import SCORERS

    config = make_config(tiny_llama, pref_data, tmp_path, loss="orpo", max_new_tokens=6,
                         generation={"scorers": ["exact_match", "rouge"]})
    config["training"].update(max_steps=24, batch_size=8, lr=1e-2)  # ORPO's NLL term teaches the replies
    config["evaluation"] = {"strategy": "steps", "every_n_steps": 12, "metric": "rougeLsum"}
    results, run_dir = tf_run(config)
    names = ("exact_match", "rouge1", "rouge2", "rougeLsum", "distinct_fraction", "reward_accuracy", "reward_margin")
    for split in ("validation", "test"):
        assert set(names) <= set(results[split]), (split, sorted(results[split]))
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rouge = [x["rougeLsum"] for x in history if x["split"] == "validation"]
    assert len(rouge) == 2 and results["metric"] == "rougeLsum" and max(rouge) > 0.2
    assert results["best_metric"] == pytest.approx(max(rouge), abs=1e-12)

    records = {split: [json.loads(x) for x in Path(pref_data[split]).read_text().splitlines()] for split in ("validation", "test")}
    for split in ("validation", "test"):
        rows = read_jsonl(run_dir / "reports" / f"{split}_generations.jsonl")
        assert [r["reference"] for r in rows] == [chosen_text(rec) for rec in records[split]]
        replies, refs = [r["output"] for r in rows], [[r["reference"]] for r in rows]
        for scorer in ("exact_match", "rouge"):
            for key, value in SCORERS[scorer].fn(replies, refs).items():
                assert results[split][key] == pytest.approx(value, abs=1e-9), (split, key)
        assert results[split]["distinct_fraction"] == pytest.approx(len(set(replies)) / len(replies))
        assert all(set(r["score"]) == {"exact_match", "rouge1", "rouge2", "rougeLsum"} for r in rows)

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    rows = read_jsonl(run_dir / "reports" / "test_generations.jsonl")
    for record, row in list(zip(records["test"], rows))[:4]:
        turns = record["prompt"] if isinstance(record["prompt"], list) else [{"role": "user", "content": record["prompt"]}]
        prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        assert row["prompt"] == prompt
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
        assert row["output"] == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    from tuneforge.cli import main

    assert main(["evaluate", "--run", str(run_dir)]) == 0  # the inference path generates and scores alike
    saved = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())["metrics"]
    assert {k: saved[k] for k in names} == pytest.approx({k: results["test"][k] for k in names}, abs=1e-6)
    assert read_jsonl(run_dir / "eval" / "test" / "reports" / "test_generations.jsonl") == rows


@pytest.mark.parametrize(("metric", "scorers"), [("accuracy", []), ("rougeLsum", ["exact_match"]),
                                                 ("distinct_fraction", [])])
def test_a_generation_metric_without_its_scorer_fails_before_training(tf_run: Any, tiny_llama: str,
                                                                       pref_data: dict[str, str], tmp_path: Path,
                                                                       metric: str, scorers: list[str]) -> None:
    config = make_config(tiny_llama, pref_data, tmp_path, generation={"scorers": scorers})
    config["evaluation"]["metric"] = metric
    with pytest.raises(ConfigError, match=rf"evaluation.metric: '{metric}' .*task.generation.scorers") as err:
        tf_run(config)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before the run directory, let alone a step
