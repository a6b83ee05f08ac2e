"""What a study leaves in its directory: the best config as ready-to-train YAML,
``trials.csv``, PNG plots, ``report.md``; and the ``--show`` leaderboard."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from tuneforge.search.space import apply_params

log = logging.getLogger("tuneforge.search")


def _objectives(study: Any) -> list[tuple[str, str]]:
    meta = study.user_attrs.get("tuneforge", {})
    pairs = meta.get("objectives")
    if pairs:
        return [(m, d) for m, d in pairs]
    return [(f"value_{i}", d.name.lower()) for i, d in enumerate(study.directions)]


def ranked_trials(study: Any) -> list[Any]:
    """Finished trials with values, best first (by the first objective)."""
    sign = 1.0 if study.directions[0].name == "MAXIMIZE" else -1.0
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.values]
    return sorted(done, key=lambda t: (-sign * t.values[0], t.number))


def best_trials(study: Any) -> list[Any]:
    """The best trial (one objective) or the Pareto front (several), best first objective first."""
    if len(study.directions) == 1:
        ranked = ranked_trials(study)
        return ranked[:1]
    front = {t.number for t in study.best_trials}
    return [t for t in ranked_trials(study) if t.number in front]


def leaderboard(study: Any, limit: int = 20) -> str:
    """A plain-text table of the best trials and a count of pruned/failed ones."""
    objs = _objectives(study)
    trials = study.get_trials(deepcopy=False)
    ranked = ranked_trials(study)[:limit]
    keys = sorted({k for t in ranked for k in t.params})
    front = {t.number for t in best_trials(study)}
    header = ["#", *[f"{m} ({d[:3]})" for m, d in objs], "steps", *keys]
    rows = [[f"{t.number}{'*' if t.number in front else ''}", *[f"{v:.4g}" for v in t.values],
             str(t.user_attrs.get("steps", "")), *[_fmt(t.params.get(k, "-")) for k in keys]] for t in ranked]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    mark = "* = best" if len(objs) == 1 else "* = on the Pareto front"
    return "\n".join([f"study '{study.study_name}': {summary}   ({mark})", *lines])


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(runner: Any) -> dict[str, Any]:
    """Write best config(s), trials.csv, plots and report.md into the study directory."""
    study, out = runner.study, runner.study_dir
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"plots": []}
    _write_csv(study, out / "trials.csv")
    written["csv"] = str(out / "trials.csv")
    best = best_trials(study)
    base = {k: v for k, v in runner.base_raw.items() if k != "search"}
    for i, t in enumerate(best):
        raw = apply_params(base, t.params)
        raw.setdefault("output", {})["dir"] = str(out / ("best" if i == 0 else f"pareto-{t.number}"))
        header = (f"# Best config of study '{study.study_name}' (trial {t.number}: "
                  + ", ".join(f"{m}={v:.4g}" for (m, _), v in zip(_objectives(study), t.values))
                  + ").\n# Train it: tuneforge train --config <this file>\n")
        name = "best_config.yaml" if i == 0 else f"pareto/trial-{t.number:04d}.yaml"
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        written.setdefault("configs", []).append(str(path))
    try:
        written["plots"] = _plots(study, out / "plots")
    except Exception as exc:  # plotting must never lose a study's results
        log.warning("plots failed: %s", exc)
        written["plot_error"] = str(exc)
    _write_markdown(study, out / "report.md", written)
    return written


def _write_csv(study: Any, path: Path) -> None:
    objs = _objectives(study)
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    attrs = ["steps", "wall_seconds", "overhead_seconds", "exit_code", "error", "run_dir"]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["number", "state", *[m for m, _ in objs], *keys, *attrs])
        for t in trials:
            values = list(t.values) if t.values else [""] * len(objs)
            w.writerow([t.number, t.state.name, *values, *[t.params.get(k, "") for k in keys],
                        *[t.user_attrs.get(a, "") for a in attrs]])
    tmp.replace(path)


def _plots(study: Any, plot_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    plot_dir.mkdir(parents=True, exist_ok=True)
    objs = _objectives(study)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not done:
        return []
    multi = len(objs) > 1
    target = (lambda t: t.values[0]) if multi else None
    name = objs[0][0]
    varying = [k for k in {k for t in done for k in t.params} if len({json.dumps(t.params.get(k)) for t in done}) > 1]
    jobs: list[tuple[str, Any]] = [
        ("optimization_history.png", lambda: ovm.plot_optimization_history(study, target=target, target_name=name)),
    ]
    if len(done) >= 2 and varying:
        jobs.append(("param_importances.png", lambda: ovm.plot_param_importances(
            study, target=target, target_name=name)))
        jobs.append(("parallel_coordinate.png", lambda: ovm.plot_parallel_coordinate(
            study, target=target, target_name=name)))
    if multi and len(objs) <= 3:
        jobs.append(("pareto_front.png", lambda: ovm.plot_pareto_front(
            study, target_names=[m for m, _ in objs])))
    if not multi and any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        jobs.append(("intermediate_values.png", lambda: ovm.plot_intermediate_values(study)))
    written = []
    import warnings

    for filename, make in jobs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            fig.savefig(plot_dir / filename, dpi=90)
            plt.close(fig)
            written.append(str(plot_dir / filename))
        except Exception as exc:
            log.warning("plot %s skipped: %s", filename, exc)
    return written


def _write_markdown(study: Any, path: Path, written: dict[str, Any]) -> None:
    objs = _objectives(study)
    meta = study.user_attrs.get("tuneforge", {})
    trials = study.get_trials(deepcopy=False)
    lines = [f"# Search report: {study.study_name}", "",
             f"Strategy `{meta.get('strategy', '?')}`, objectives "
             + ", ".join(f"`{m}` ({d})" for m, d in objs) + f", {len(trials)} trials.", "",
             "## Leaderboard", "", "```", leaderboard(study), "```", ""]
    best = best_trials(study)
    if best:
        title = "Best trial" if len(objs) == 1 else "Pareto front"
        lines += [f"## {title}", ""]
        for t in best:
            shown = ", ".join(f"{m}={v:.4g}" for (m, _), v in zip(objs, t.values))
            params = ", ".join(f"`{k}={_fmt(v)}`" for k, v in t.params.items())
            lines.append(f"- trial {t.number}: {shown}; {params}")
        lines += ["", "Ready-to-train config: " + ", ".join(f"`{Path(p).name}`" for p in written.get("configs", [])), ""]
    failed = [t for t in trials if t.state.name == "FAIL"]
    if failed:
        lines += ["## Failed trials", ""]
        lines += [f"- trial {t.number} (exit {t.user_attrs.get('exit_code', '?')}): {t.user_attrs.get('error', 'stale')}"
                  for t in failed]
        lines.append("")
    overheads = [t.user_attrs["overhead_seconds"] for t in trials if t.user_attrs.get("overhead_seconds") is not None]
    if overheads:
        lines += [f"Launch overhead per trial (launch to first step + exit): median "
                  f"{sorted(overheads)[len(overheads) // 2]:.2f} s over {len(overheads)} trials.", ""]
    if written.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}](plots/{Path(p).name})" for p in written["plots"]] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
