"""A plugin the distributed tests load (``plugins: [tf_probe]``): every rank writes
``probe-rank-<r>.json`` into the run dir with what it saw of the run."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tuneforge import hookimpl

_seen: dict[str, Any] = {}


@hookimpl
def tf_on_fit_start(run: Any) -> None:
    opt = run.optimizer
    inner = getattr(opt, "optimizer", opt)
    _seen.update(kind=run.runtime.kind, optimizer=type(inner).__name__, trackers=len(run.trackers.trackers))
    # what the ZeRO optimizer itself says it offloads (stage 3: optimizer/params; stage 1/2: cpu_offload)
    _seen.update(offload_optimizer=bool(getattr(inner, "offload_optimizer", getattr(inner, "cpu_offload", False))),
                 offload_params=bool(getattr(inner, "offload_param", False)))


@hookimpl
def tf_on_fit_end(run: Any, result: Any) -> None:
    model = run.runtime.unwrap(run.model)
    digest = hashlib.sha256()
    replicated = True
    for name, p in sorted(model.named_parameters()):
        if hasattr(p, "ds_tensor"):  # ZeRO-3: each rank holds a partition only
            replicated = False
            break
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().numpy().tobytes())
    rt = run.runtime
    payload = {**_seen, "rank": rt.process_index, "world": rt.num_processes, "steps": result.state.step,
               "params_sha256": digest.hexdigest() if replicated else None}
    (run.run_dir / f"probe-rank-{rt.process_index}.json").write_text(json.dumps(payload), encoding="utf-8")
