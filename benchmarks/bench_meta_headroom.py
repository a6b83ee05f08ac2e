"""How much room a base encoder leaves for a meta-learned start: BANKING77 with MiniLM-L6.

Draws the same held-out N-way K-shot episodes as `tuneforge meta` with
configs/meta-banking77-minilm.yaml (same label split, seeds and query sets) and scores
two classifiers on the *frozen* pre-trained sentence embeddings, no fine-tuning at all:

* prototype: nearest normalised class mean (what every start's head begins from);
* logistic regression (scikit-learn, C=10) fitted on the support set: a tuned linear
  head, the usual "plain pre-trained" baseline of few-shot papers.

Prints ONE JSON line: per setting both accuracies (mean and 95% CI over episodes, in %)
and the points left below 100% by the better of the two. A meta-learned start cannot
gain more than that over the pre-trained start at K shots.

``--starts DIR ...`` scores other encoders the same way (a finished run's ``meta_start``
and ``multitask_start``), with the paired difference to the pre-trained encoder: whether
meta-training improved the representation itself, with no fine-tuning protocol in between.

    python benchmarks/bench_meta_headroom.py [--threads 2] [--episodes 100] [--quick]
    python benchmarks/bench_meta_headroom.py --starts runs/bench-meta/meta_start runs/bench-meta/multitask_start
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "meta-banking77-minilm.yaml"
DATA = ROOT.parent / "shared" / "data" / "intents" / "banking77" / "train.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per setting (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 5 episodes, K=5 only")
    parser.add_argument("--starts", nargs="*", default=[], metavar="DIR",
                        help="also score these encoders (Hugging Face directories, e.g. a run's meta_start)")
    args = parser.parse_args()
    if not DATA.is_file():
        print(json.dumps({"benchmark": "meta_headroom", "skipped": f"BANKING77 not found at {DATA}"}))
        return 0
    import torch
    import torch.nn.functional as F
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel

    from tuneforge.config import load_config
    from tuneforge.meta.episodes import EpisodeSampler, mean_ci95
    from tuneforge.meta.learner import EpisodeLearner, ExampleStore
    from tuneforge.meta.run import build_collection, preflight_meta

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config = load_config(CONFIG, ["output.dir=/tmp/unused"])
    meta = config.meta
    assert meta is not None
    seed = meta.seed if meta.seed is not None else config.training.seed
    plan = preflight_meta(config, check_output=False)
    store = ExampleStore()
    pools, _ = build_collection(plan, store, seed)
    store.tokenize(plan.main_task.load_tokenizer(), config.data.max_length)
    ids = sorted(i for pool in pools["test"] for v in pool.by_label.values() for i in v)
    row_of = {ex: row for row, ex in enumerate(ids)}

    def embeddings(path: str, **kwargs: object) -> torch.Tensor:
        learner = EpisodeLearner(AutoModel.from_pretrained(path, **kwargs), store, learn="full", pooling=meta.pooling)
        with torch.no_grad():
            return F.normalize(learner.embed(ids), dim=-1)

    encoders = {"pretrained": embeddings(plan.main_task.model_path(), **plan.main_task.pretrained_kwargs())}
    for path in args.starts:
        encoders[Path(path).name] = embeddings(path)

    def scores(emb: torch.Tensor, sampler: EpisodeSampler, episodes: int) -> tuple[list[float], list[float]]:
        """Per-episode query accuracy of the prototype classifier and of logistic regression."""
        proto, probe = [], []
        for index in range(episodes):
            ep = sampler.episode(index)
            xs, ys = emb[[row_of[e] for e, _ in ep.support]], torch.tensor([c for _, c in ep.support])
            xq, yq = emb[[row_of[e] for e, _ in ep.query]], torch.tensor([c for _, c in ep.query])
            centres = F.normalize(torch.zeros(ep.ways, xs.shape[1]).index_add_(0, ys, xs), dim=-1)
            proto.append(float(((xq @ centres.T).argmax(-1) == yq).float().mean()))
            clf = LogisticRegression(C=10.0, max_iter=2000).fit(xs.numpy(), ys.numpy())
            probe.append(float((clf.predict(xq.numpy()) == yq.numpy()).mean()))
        return proto, probe

    def cell(values: list[float]) -> dict[str, float]:
        mean, ci = mean_ci95(values)
        return {"accuracy": round(100 * mean, 2), "ci95": round(100 * ci, 2)}

    episodes = 5 if args.quick else (args.episodes or meta.eval.episodes)
    shots = [5] if args.quick else meta.eval.shots
    table: dict[str, dict[str, object]] = {}
    for ways in meta.eval.ways:
        for k in shots:
            # the sampler of `tuneforge meta`'s meta-test: same seed, so the same episodes
            sampler = EpisodeSampler(pools["test"], ways, k, meta.eval.query, seed + 2)
            row: dict[str, object] = {}
            base = scores(encoders["pretrained"], sampler, episodes)
            for name, emb in encoders.items():
                proto, probe = base if name == "pretrained" else scores(emb, sampler, episodes)
                row[name] = {"prototype": cell(proto), "logistic_regression": cell(probe)}
                if name == "pretrained":
                    row["room_points"] = round(100 * (1 - max(mean_ci95(proto)[0], mean_ci95(probe)[0])), 2)
                else:
                    row[f"{name}_minus_pretrained"] = {
                        "prototype": cell([a - b for a, b in zip(proto, base[0])]),
                        "logistic_regression": cell([a - b for a, b in zip(probe, base[1])]),
                    }
            table[f"{ways}-way {k}-shot"] = row
    print(json.dumps({
        "benchmark": "meta_headroom",
        "model": config.model.name_or_path,
        "data": "banking77",
        "test_labels": sum(len(p.labels) for p in pools["test"]),
        "episodes": episodes,
        "frozen_accuracy_percent": table,
        "room_at_k5_points": {s: v["room_points"] for s, v in table.items() if s.endswith(" 5-shot")},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "quick": args.quick,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
