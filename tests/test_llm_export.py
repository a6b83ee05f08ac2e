"""A tuned causal LM leaves tuneforge intact: its exported ``model/`` (full weights, a LoRA
adapter plus the base it names, or the adapter merged by ``tuneforge export --merge``) loaded
by plain ``transformers`` (+ ``peft``) and run through ``generate`` gives, token for token,
the greedy answers of the run's report, of ``tuneforge predict`` and of ``tuneforge chat``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge import inference
from tuneforge.cli import main
from tuneforge.commands.chat import ChatSession, GenerationSettings
from tuneforge.config import read_yaml, validate
from tuneforge.run import train

pytestmark = pytest.mark.usefixtures("tf_single_thread")
NEW, SAMPLES = 6, 4  # task.max_new_tokens, task.generation_samples (the first test prompts)
FORMS = {
    "lora": {"adapter": {"type": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"}},
    "full": {},
}


@pytest.fixture(scope="module", params=sorted(FORMS))
def tuned(request, tiny_llama, tiny_instruction_data, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "run"
    train(validate({
        "model": {"name_or_path": tiny_llama},
        "task": {"name": "causal_lm", "generation_samples": SAMPLES, "max_new_tokens": NEW},
        "data": {**tiny_instruction_data, "max_length": 48},
        "training": {"max_steps": 30, "batch_size": 8, "lr": 3e-2, "seed": 0},
        "evaluation": {"strategy": "no"},
        "output": {"dir": str(out)},
        **FORMS[request.param],
    }))
    return request.param, out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def sampled_prompts(run_dir: Path) -> list[str]:
    """The test prompts the run generated for (``task.generation_samples``)."""
    test_file = Path(read_yaml(run_dir / "config.yaml")["data"]["test"])
    return [r["prompt"] for r in read_jsonl(test_file)[:SAMPLES]]


def plain_greedy(model: Any, tokenizer: Any, prompts: list[str]) -> list[tuple[str, list[int]]]:
    """(rendered prompt, generated ids) per prompt: the chat template and ``generate``, nothing else."""
    results = []
    for prompt in prompts:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=NEW, do_sample=False)
        results.append((tokenizer.decode(enc["input_ids"][0]), out[0, enc["input_ids"].shape[1]:].tolist()))
    return results


def plain_models(form: str, run_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """The run's model as a user outside tuneforge loads it, in each exported form."""
    model_dir = run_dir / "model"
    if form == "full":
        return {"model/": AutoModelForCausalLM.from_pretrained(model_dir).eval()}
    base_name = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name), model_dir).eval()
    merged = tmp_path / "merged"
    assert main(["export", "--run", str(run_dir), "--merge", "--output", str(merged)]) == 0
    assert not (merged / "adapter_config.json").exists()
    return {"model/ (adapter + base)": adapter, "export --merge": AutoModelForCausalLM.from_pretrained(merged).eval()}


def test_exported_model_reproduces_the_greedy_outputs_of_the_run(tuned, tmp_path, capsys):
    form, run_dir = tuned
    prompts = sampled_prompts(run_dir)
    reported = read_jsonl(run_dir / "reports" / "test_generations.jsonl")
    data, preds_path = tmp_path / "prompts.jsonl", tmp_path / "preds.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    assert main(["predict", "--run", str(run_dir), "--data", str(data), "-o", str(preds_path)]) == 0
    predicted = [p["generated"] for p in read_jsonl(preds_path)]
    session = ChatSession(inference.load(run=run_dir), GenerationSettings(max_new_tokens=NEW))
    chatted = []
    for prompt in prompts:
        session.reset()
        chatted.append(session.send(prompt))
    capsys.readouterr()
    assert main(["chat", "--run", str(run_dir), "--max-new-tokens", str(NEW), "--message", prompts[0]]) == 0
    assert capsys.readouterr().out == chatted[0].answer + "\n"
    assert [r["output"] for r in reported] == predicted == [t.answer for t in chatted]

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    for name, model in plain_models(form, run_dir, tmp_path).items():
        plain = plain_greedy(model, tokenizer, prompts)
        assert [p for p, _ in plain] == [r["prompt"] for r in reported], name
        assert [ids for _, ids in plain] == [t.answer_ids for t in chatted], name  # token for token
        assert [tokenizer.decode(ids, skip_special_tokens=True).strip() for _, ids in plain] == predicted, name


def test_the_tuned_model_is_not_the_base(tuned, tiny_llama):
    """The reproduction above compares a changed model: its logits are not the base model's."""
    _, run_dir = tuned
    trained = inference.load(run=run_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids = torch.tensor([trained.tokenizer("what is the opposite of good and sun")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(trained.model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-4)
