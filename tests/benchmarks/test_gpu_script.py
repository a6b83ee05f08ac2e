"""The GPU proof script (benchmarks/gpu): its pure functions in the default suite, and its whole
dry run on the CPU (tiny models, the same code as on the GPU) as a slow test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))

import measure  # noqa: E402

KEYS = {
    "env": {"torch", "device", "packages", "measured_bf16_matmul_tflops", "dry_run", "date"},
    "smollm2_lora_bf16": {"tokens_per_s", "peak_memory_gib", "losses_bf16", "losses_fp32_cpu", "max_rel_diff",
                          "rel_tol", "within_tolerance", "tolerance_rule"},
    "llama1b_throughput": {"variants", "mfu_formula", "peak_bf16_tflops", "tokens_per_step"},
    "zero3_accelerate": {"variants", "formula", "note"},
    "qlora_nf4": {"skipped"},  # no CUDA / bitsandbytes in the dry run
    "overhead_vs_plain": {"median_step_s", "ratio_tuneforge_vs_plain", "max_loss_diff"},
    "summary": {"status", "wall_s"},
}


def test_run_sh_parses() -> None:
    subprocess.run(["bash", "-n", str(GPU / "run.sh")], check=True)
    subprocess.run(["bash", "-n", str(GPU / "fetch_assets.sh")], check=True)


def test_mfu_formula() -> None:
    n = 1_000_000_000
    assert measure.flops_per_token(n, "full") == 6e9
    assert measure.flops_per_token(n, "lora") == 4e9
    assert measure.flops_per_token(n, "full+attention", layers=16, hidden=2048, seq_len=2048) == 6e9 + 12 * 16 * 2048 * 2048
    # 6 GFLOP/token at 66,000 tokens/s on a 989 TFLOP/s chip
    assert math.isclose(measure.mfu(6e9, 66_000, 989e12), 0.4004, rel_tol=1e-3)
    assert measure.peak_bf16_flops("NVIDIA H200") == 989e12
    assert measure.peak_bf16_flops("cpu (x86_64)") is None
    assert measure.matmul_params(1_100, 100) == 1_000
    with pytest.raises(ValueError, match="mode"):
        measure.flops_per_token(n, "half")


def test_zero3_formula() -> None:
    assert measure.zero3_state_bytes(1_000, 1, offload_optimizer=False) == 16_000
    assert measure.zero3_state_bytes(1_000, 2, offload_optimizer=False) == 8_000
    assert measure.zero3_state_bytes(1_000, 1, offload_optimizer=True) == 4_000


def test_loss_tolerance() -> None:
    ref = [2.0, 1.5, 1.0]
    ok = measure.compare_losses([2.02, 1.49, 1.005], ref)
    assert ok["within_tolerance"] and math.isclose(ok["max_rel_diff"], 0.01)
    assert not measure.compare_losses([2.1, 1.5, 1.0], ref)["within_tolerance"]  # 5% off
    assert not measure.compare_losses([float("nan"), 1.5, 1.0], ref)["within_tolerance"]
    with pytest.raises(ValueError, match="equal length"):
        measure.compare_losses([1.0], ref)
    assert measure.loss_falls([3.0, 2.9, 2.5, 2.0, 1.0, 0.9])["loss_falls"]
    assert not measure.loss_falls([1.0, 1.0, 1.1, 1.2])["loss_falls"]


def test_timing_summaries() -> None:
    stamps = [0.0, 1.0, 1.5, 2.0, 2.5]  # first step is warm-up
    assert measure.step_seconds(stamps, 1) == [0.5, 0.5, 0.5]
    assert measure.throughput(stamps, 1, 1000) == {"step_s_median": 0.5, "tokens_per_s": 2000.0, "timed_steps": 3}
    with pytest.raises(ValueError, match="warm-up"):
        measure.step_seconds(stamps, 4)


def test_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out" / "gpu.jsonl"
    path.parent.mkdir()
    path.write_text("stale\n")
    lines = measure.JsonLines(path)
    lines.emit({"check": "a", "x": 1.5})
    lines.emit({"check": "b", "bad": float("nan")})
    assert [json.loads(x)["check"] for x in path.read_text().splitlines()] == ["a", "b"]
    assert capsys.readouterr().out.count("\n") == 2
    assert measure.finite_numbers({"a": [1.0, {"b": float("inf")}], "c": 2}) == ["a[1].b"]


@pytest.mark.slow
def test_dry_run_writes_every_check(tmp_path: Path) -> None:
    """The whole script on the CPU: every check's line, with its keys and only finite numbers."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(GPU / "gpu_checks.py"), "--dry-run", "--out", str(out),
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    lines = {json.loads(x)["check"]: json.loads(x) for x in (out / "gpu.jsonl").read_text().splitlines()}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(lines) == set(KEYS)
    for check, keys in KEYS.items():
        line = lines[check]
        assert "error" not in line, (check, line)
        assert keys <= set(line), (check, keys - set(line))
        assert measure.finite_numbers(line) == [], (check, measure.finite_numbers(line))
    assert len(lines["smollm2_lora_bf16"]["losses_bf16"]) == 20 and lines["smollm2_lora_bf16"]["within_tolerance"]
    assert {"full", "full_gc", "lora", "lora_gc"} == set(lines["llama1b_throughput"]["variants"])
    for row in lines["llama1b_throughput"]["variants"].values():
        assert row["tokens_per_s"] > 0 and ("mfu" in row or "mfu_4n" in row)
    zero3 = lines["zero3_accelerate"]["variants"]["gpu_adam"]
    assert zero3["distributed"] == "DEEPSPEED" and 0.9 < zero3["state_vs_formula"] < 1.3
    assert lines["summary"]["status"]["qlora_nf4"] == "skipped"
