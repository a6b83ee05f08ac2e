"""``benchmarks/bench_llm.py --tiny``: every worker of the LLM benchmark on a tiny random Llama
(SciTLDR when ../shared has it, else SciTLDR-shaped records), checked for its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_llm.py"
SECTIONS = {
    "lora_vs_plain": {"cpu_median_step_s", "wall_median_step_s", "tuneforge_vs_plain_cpu", "tuneforge_vs_plain_wall",
                      "max_loss_diff", "peak_rss_mib", "trainable"},
    "reply_logits": {"tuneforge_vs_plain_full_logits_cpu", "max_loss_diff", "first_step_loss_diff", "peak_rss_mib"},
    "packing_vs_padding": {"real_tokens_per_wall_s", "real_tokens_per_cpu_s", "pad_fraction",
                           "packed_vs_padded_wall", "packed_vs_padded_cpu", "packed_vs_padded_to_max_cpu",
                           "packed_vs_padded_to_max_wall", "max_length"},
    "lora_vs_full": {"wall_median_step_s", "step_time_ratio_wall", "peak_rss_mib", "rss_ratio", "trainable"},
    "grad_ckpt": {"wall_median_step_s", "step_time_ratio_wall", "peak_rss_mib", "rss_ratio", "max_loss_diff_vs_off"},
    "generation": {"batched", "single", "batched_vs_single", "scores", "eval_batch_size"},
}


@pytest.mark.slow
def test_tiny_run_prints_one_json_line() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert {"quick", "tiny", "threads", "load_avg", "goals", *SECTIONS} <= set(result)
    assert result["tiny"] is True and result["quick"] is False
    assert len(result["load_avg"]["start"]) == len(result["load_avg"]["end"]) == 3
    for section, keys in SECTIONS.items():
        assert keys <= set(result[section]), (section, set(result[section]))
    plain = result["lora_vs_plain"]
    assert plain["max_loss_diff"] <= 1e-5, plain
    assert plain["trainable"]["plain"] == plain["trainable"]["tuneforge"] > 0
    assert result["grad_ckpt"]["max_loss_diff_vs_off"] <= 1e-5
    assert result["lora_vs_full"]["trainable"]["lora"] < result["lora_vs_full"]["trainable"]["full"]
    assert result["generation"]["batched"]["new_tokens"] > 0
    pad = result["packing_vs_padding"]["pad_fraction"]
    assert set(pad) == {"padded", "padded_to_max", "packed"}
    assert pad["packed"] <= pad["padded"] <= pad["padded_to_max"], pad  # tiny: examples may fill max_length
