"""Generation-scored causal-LM evaluation on 1 and 2 gloo ranks (DDP and ZeRO-3).

Every rank generates on every evaluation batch (ZeRO-3 gathers sharded weights in each
forward, so ranks must step together), replies of different lengths are padded across ranks,
and the gathered replies come back in record order without the duplicates that even batches
add: the metrics and the per-example generations of a 2-rank run equal the 1-process run's.

Both runs start from a tiny Llama trained in-process first (its replies differ from record to
record) and train with ``lr=1e-12``: the weights stay equal across world sizes, so a difference
in the replies can only come from how evaluation generates and gathers, not from the ~1e-5
training drift that flips greedy near-ties of a tiny random model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from launching import check, run, torchrun, train_args, worker_env

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
N_VAL, N_TEST = 15, 16  # eval batches of 6: 3 per split, so one rank gets a padded duplicate batch
GENERATION_METRICS = ("exact_match", "rouge1", "rouge2", "rougeLsum", "squad_exact_match", "squad_f1", "chrf",
                      "distinct_fraction")


@pytest.fixture(scope="module")
def trained_llama(tiny_llama: str, tiny_instruction_data: dict[str, str],
                  tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Llama after 120 steps on the instruction data (exported), trained in this process."""
    from tuneforge.config import validate
    from tuneforge.run import train

    config = {"model": {"name_or_path": tiny_llama}, "task": {"name": "causal_lm"},
              "data": {**tiny_instruction_data, "max_length": 48},
              "training": {"max_steps": 120, "batch_size": 8, "lr": 1e-2, "seed": 0},
              "evaluation": {"strategy": "no"},
              "output": {"dir": str(tmp_path_factory.mktemp("gen-base") / "run"), "export": True}}
    return str(train(validate(config))["model_dir"])


@pytest.fixture(scope="module")
def gen_config(trained_llama: str, tiny_instruction_data: dict[str, str]) -> dict[str, Any]:
    return {
        "model": {"name_or_path": trained_llama},
        "task": {"name": "causal_lm", "max_new_tokens": 6,
                 "generation": {"scorers": ["exact_match", "rouge", "squad", "chrf"]}},
        "data": {**tiny_instruction_data, "max_length": 48, "max_eval_samples": N_VAL},
        "training": {"max_steps": 4, "batch_size": 8, "eval_batch_size": 6, "lr": 1e-12, "seed": 0,
                     "log_every_n_steps": 1},
        "evaluation": {"strategy": "steps", "every_n_steps": 4, "metric": "rougeLsum"},
        "output": {"keep_last": 1, "save_best": False, "export": False},
    }


def generations(run_dir: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "reports" / f"{split}_generations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(gen_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("gen-1") / "run"
    path = make_config(gen_config, run_dir, training={"batch_size": 16})  # 1 x 16 == 2 x 8
    check(run([sys.executable, *train_args(path)], env=worker_env()))
    return run_dir


@pytest.mark.parametrize("distributed", [{"strategy": "ddp"}, {"strategy": "deepspeed", "zero_stage": 3}],
                         ids=["ddp", "zero3"])
def test_two_ranks_score_generations_like_one(distributed: dict[str, Any], gen_config: dict[str, Any],
                                              one_process: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    check(run(torchrun(2, *train_args(make_config(gen_config, run_dir, distributed=distributed)))))
    got, want = (json.loads((d / "results.json").read_text()) for d in (run_dir, one_process))
    assert got["world_size"] == 2 and want["world_size"] == 1
    for split in ("validation", "test"):
        for name in GENERATION_METRICS:
            assert got[split][name] == pytest.approx(want[split][name], abs=1e-9), (split, name)
        assert got[split]["perplexity"] == pytest.approx(want[split]["perplexity"], rel=1e-4)
    for split, n in (("validation", N_VAL), ("test", N_TEST)):
        rows, reference = generations(run_dir, split), generations(one_process, split)
        assert len(rows) == n  # every record once, in order
        assert [r["prompt"] for r in rows] == [r["prompt"] for r in reference]
        assert [r["output"] for r in rows] == [r["output"] for r in reference]
        assert len({r["output"] for r in rows}) > n // 4  # replies differ, so an order mix-up would show
