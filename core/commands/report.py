"""``tuneforge report RUN``: training curves and per-class results of a run as PNG + Markdown.

Reads ``RUN/metrics.jsonl`` (the ``jsonl`` tracker) and the task's reports in
``RUN/reports/`` and writes, into ``--output`` (default ``RUN/reports``):

* ``loss.png`` (train loss, validation loss), ``lr.png`` (learning rate, and gradient
  norm when logged), ``metrics.png`` (every validation metric; test values as dashed lines);
* for every task report holding a confusion matrix (``labels`` + ``confusion_matrix``, as the
  classification task writes): ``<split>_confusion_matrix.png``;
* ``report.md``: results, the figures, and a per-class table for every task report holding
  a per-class ``report`` (precision / recall / F1 / support, as scikit-learn and seqeval give).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tuneforge.commands.runs import read_metrics, summarize
from tuneforge.errors import ConfigError

_NOT_METRICS = {"step", "split", "time", "epoch"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render a run's training curves and per-class results (PNG, Markdown)")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--output", "-o", type=Path, help="where to write (default: RUN/reports)")
    p.set_defaults(func=run)


def _series(lines: list[dict[str, Any]], split: str, name: str) -> tuple[list[int], list[float]]:
    points = [(x["step"], float(x[name])) for x in lines
              if x.get("split") == split and isinstance(x.get(name), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def plot_curves(lines: list[dict[str, Any]], out: Path) -> list[Path]:
    """loss.png, lr.png and metrics.png from metrics.jsonl lines; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    fig, ax = plt.subplots(figsize=(7, 4))
    for split, style in (("train", "-"), ("validation", "o-")):
        steps, values = _series(lines, split, "loss")
        if steps:
            ax.plot(steps, values, style, label=f"{split} loss", markersize=4)
    ax.set(xlabel="optimizer step", ylabel="loss", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "loss.png")

    steps, lrs = _series(lines, "train", "lr")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, lrs, color="tab:green", label="learning rate")
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.grid(alpha=0.3)
    g_steps, norms = _series(lines, "train", "grad_norm")
    if g_steps:
        twin = ax.twinx()
        twin.plot(g_steps, norms, color="tab:gray", alpha=0.6, label="gradient norm")
        twin.set_ylabel("gradient norm (before clipping)")
        twin.legend(loc="upper right")
    ax.legend(loc="upper left")
    save(fig, "lr.png")

    names = sorted({k for x in lines if x.get("split") == "validation" for k, v in x.items()
                    if k not in _NOT_METRICS and k != "loss" and isinstance(v, (int, float))})
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(names):
        steps, values = _series(lines, "validation", name)
        ax.plot(steps, values, "o-", color=f"C{i}", label=f"validation {name}", markersize=4)
        _, test_values = _series(lines, "test", name)
        if test_values:
            ax.axhline(test_values[-1], color=f"C{i}", linestyle="--", alpha=0.7, label=f"test {name}")
    ax.set(xlabel="optimizer step", title="Evaluation metrics")
    ax.grid(alpha=0.3)
    if names:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no validation metrics logged", ha="center", va="center", transform=ax.transAxes)
    save(fig, "metrics.png")
    return written


def plot_confusion_matrix(labels: list[str], matrix: list[list[int]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(matrix)
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > threshold else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def per_class_table(report: dict[str, Any]) -> list[str]:
    """Markdown rows for a scikit-learn/seqeval ``output_dict`` report."""
    rows = ["| class | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    for name, row in report.items():
        if not isinstance(row, dict):
            continue
        rows.append(f"| {name} | {row.get('precision', 0):.4f} | {row.get('recall', 0):.4f} | "
                    f"{row.get('f1-score', 0):.4f} | {int(row.get('support', 0))} |")
    return rows


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"'{run_dir}' is not a run directory (config.yaml is missing); pass an output.dir "
                          "of `tuneforge train` (see `tuneforge runs`)")
    lines = read_metrics(run_dir)
    if not lines:
        raise ConfigError(f"run '{run_dir}' has no metrics.jsonl to plot: train with the jsonl tracker "
                          "(trackers: [jsonl, ...]), which is on by default")
    out = args.output or run_dir / "reports"
    out.mkdir(parents=True, exist_ok=True)
    written = plot_curves(lines, out)
    info = summarize(run_dir)
    md = [f"# Run report: {run_dir.resolve().name}", "",
          f"- task: {info['task']}", f"- status: {info['status']}", f"- steps: {info['steps']}",
          f"- best validation {info['metric']}: {info['best']}", f"- test {info['metric']}: {info['test']}", "",
          "![loss](loss.png)", "", "![learning rate](lr.png)", "", "![metrics](metrics.png)", ""]
    for path in sorted((run_dir / "reports").glob("*.json")) if (run_dir / "reports").is_dir() else []:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if not isinstance(payload, dict):
            continue
        split = path.stem.split("_")[0]
        if "confusion_matrix" in payload and "labels" in payload:
            png = plot_confusion_matrix(payload["labels"], payload["confusion_matrix"],
                                        out / f"{split}_confusion_matrix.png", f"Confusion matrix ({split})")
            written.append(png)
            md += [f"## Confusion matrix ({split})", "", f"![confusion matrix]({png.name})", ""]
        if isinstance(payload.get("report"), dict):
            md += [f"## Per-class results ({split}, from {path.name})", "", *per_class_table(payload["report"]), ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    written.append(out / "report.md")
    for path in written:
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0
