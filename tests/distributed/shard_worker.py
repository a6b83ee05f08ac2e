"""One rank of the sharding test: build the Runtime from a run config, prepare a loader of
40 indexed examples (+ a tiny model/optimizer, so DeepSpeed builds its engine), and write
``shard-rank-<r>.json`` with the indices this rank saw in epoch 0.

    torchrun --nproc_per_node 2 shard_worker.py CONFIG OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tuneforge.config import load_config
from tuneforge.data import make_loader
from tuneforge.distributed import create_runtime
from tuneforge.errors import TuneforgeError


def main(config_path: str, out_dir: str) -> int:
    try:
        config = load_config(config_path)
        runtime = create_runtime(config)
    except TuneforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    features = [{"idx": i} for i in range(40)]
    collate = lambda feats: {"idx": torch.tensor([f["idx"] for f in feats])}  # noqa: E731
    loader = make_loader(features, config.training.batch_size, collate, shuffle=True, seed=config.training.seed)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer, loader = runtime.prepare(model, optimizer, loader)
    loader.set_epoch(0)
    seen = [int(i) for batch in loader for i in batch["idx"]]
    inner = getattr(optimizer, "optimizer", optimizer)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    payload = {"rank": runtime.process_index, "world": runtime.num_processes, "kind": runtime.kind,
               "optimizer": type(inner).__name__, "indices": seen}
    (Path(out_dir) / f"shard-rank-{runtime.process_index}.json").write_text(json.dumps(payload))
    runtime.end()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
