"""``tuneforge runs [DIR]``: the run directories under DIR with status, steps and best metric."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from tuneforge.errors import ConfigError

#: A run whose status says "running" but whose files are older than this is reported "interrupted".
STALE_SECONDS = 15 * 60
_SKIP_DIRS = {"checkpoints", "model", "eval", "reports", "tensorboard", "mlflow", "wandb", "export", "merged"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list run directories with their status and best metric")
    p.add_argument("dir", nargs="?", type=Path, default=Path("runs"), help="directory to search (default: runs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def find_runs(root: Path, max_depth: int = 4) -> list[Path]:
    """Directories at most ``max_depth`` below ``root`` holding a ``config.yaml`` (run directories)."""
    found: list[Path] = []

    def walk(directory: Path, depth: int) -> None:
        if (directory / "config.yaml").is_file():
            found.append(directory)
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in directory.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS)
        except OSError:
            return
        for child in children:
            if not child.name.startswith("."):
                walk(child, depth + 1)

    walk(root, 0)
    return found


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` (unreadable lines are skipped: the file may be mid-write)."""
    from tuneforge.data import read_jsonl  # here: tuneforge.data imports torch

    path = run_dir / "metrics.jsonl"
    return read_jsonl(path, skip_invalid=True) if path.is_file() else []


def summarize(run_dir: Path, now: float | None = None) -> dict[str, Any]:
    """Status, steps, selection metric and its best value, test value, last update of one run."""
    now = time.time() if now is None else now
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    results = _read_json(run_dir / "results.json")
    status_file = _read_json(run_dir / "status.json")
    lines = read_metrics(run_dir)
    files = [p for p in (run_dir / n for n in ("results.json", "status.json", "metrics.jsonl", "config.yaml"))
             if p.exists()]
    updated = max((p.stat().st_mtime for p in files), default=0.0)
    evaluation = config.get("evaluation") or {}
    metric = results.get("metric") or evaluation.get("metric")
    best = results.get("best_metric")
    validation = [x for x in lines if x.get("split") == "validation"]
    if metric is None and validation:
        names = sorted(k for k in validation[-1] if k not in ("step", "split", "time", "loss"))
        metric = names[0] if names else "loss"
    if best is None and metric and validation:
        values = [x[metric] for x in validation if isinstance(x.get(metric), (int, float))]
        greater = evaluation.get("greater_is_better")
        greater = metric != "loss" and "perplexity" not in metric if greater is None else greater
        best = (max if greater else min)(values) if values else None
    steps = results.get("steps") or max((x.get("step", 0) for x in lines), default=0)

    if results.get("status"):
        status = results["status"]
    elif status_file.get("status") == "running":
        status = "running" if now - updated < STALE_SECONDS else "interrupted"
    elif status_file.get("status"):
        status = status_file["status"]
    elif (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        status = "interrupted"
    else:
        status = "not started"
    test = results.get("test") or {}
    return {
        "run": str(run_dir),
        "status": status,
        "steps": steps,
        "metric": metric,
        "best": best,
        "test": test.get(metric) if metric else None,
        "task": (config.get("task") or {}).get("name"),
        "updated": updated,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def run(args: argparse.Namespace) -> int:
    root: Path = args.dir
    if not root.is_dir():
        raise ConfigError(f"'{root}' is not a directory; pass the directory holding your runs "
                          "(the parent of the output.dir of your configs)")
    rows = [summarize(d) for d in find_runs(root)]
    rows.sort(key=lambda r: r["updated"], reverse=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs under {root} (a run directory holds the config.yaml `tuneforge train` writes)")
        return 0
    header = ("RUN", "TASK", "STATUS", "STEPS", "METRIC", "BEST", "TEST", "UPDATED")
    table = [header] + [
        (
            str(Path(r["run"]).relative_to(root)) if Path(r["run"]) != root else str(root),
            _fmt(r["task"]), r["status"], _fmt(r["steps"]), _fmt(r["metric"]), _fmt(r["best"]), _fmt(r["test"]),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r["updated"])) if r["updated"] else "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
