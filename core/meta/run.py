"""``tuneforge meta``: build the task collection, meta-train a start, train the
multi-task baseline, and compare all starts on the same held-out episodes.

Run directory (``output.dir``): ``config.yaml``, ``metrics.jsonl`` (trackers),
``meta_start/`` (the meta-learned encoder in Hugging Face format; use it as
``model.name_or_path``), ``multitask_start/``, ``splits.json`` (the label split /
task lists) and ``results.json`` (the table with 95% confidence intervals).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from tuneforge import jsonio
from tuneforge.config import RunConfig, dump_config
from tuneforge.meta.checkpoints import MetaCheckpoints
from tuneforge.meta.episodes import EpisodeSampler, mean_ci95
from tuneforge.meta.learner import ContrastiveAdaptation, EpisodeLearner, ExampleStore
from tuneforge.meta.loops import EpisodeScores, meta_test, meta_train, multitask_steps, multitask_train
from tuneforge.meta.plan import MetaPlan, build_collection, preflight_meta
from tuneforge.plugin_manager import PluginManager

__all__ = ["MetaPlan", "MetaRun", "build_collection", "format_table", "preflight_meta", "run_meta"]

log = logging.getLogger("tuneforge.meta")


# -- the command ------------------------------------------------------------------------


def _setting(ways: int, shots: int) -> str:
    return f"{ways}-way {shots}-shot"


def run_meta(config: RunConfig, plugins: PluginManager | None = None) -> dict[str, Any]:
    """Meta-train, run the baselines, meta-test; returns (and writes) results.json."""
    plan = preflight_meta(config, plugins)
    with plan.plugins.blaming():
        return _run_meta(plan)


def _run_meta(plan: MetaPlan) -> dict[str, Any]:
    meta_run = MetaRun(plan)
    status = "failed"
    try:
        results = meta_run.run()
        status = "completed"
        return results
    except BaseException as exc:
        plan.plugins.call("tf_on_exception", run=meta_run.context, exc=exc)
        raise
    finally:
        meta_run.trackers.finish(status)
        meta_run.runtime.end()


class MetaRun:
    """One meta run, phase by phase: meta-training, the multi-task baseline, meta-val and the
    meta-test table. Observer plugins see it through the same hooks as a training run: a
    :class:`~tuneforge.loop.RunContext` whose ``model`` is the encoder, ``tf_on_step_end`` per
    meta (or multi-task) step, ``tf_on_evaluate`` with split ``meta_val``/``meta_test``,
    ``tf_on_checkpoint``, ``tf_on_fit_end`` and ``tf_on_exception``."""

    def __init__(self, plan: MetaPlan) -> None:
        from tuneforge.builders import setup_logging
        from tuneforge.distributed import create_runtime
        from tuneforge.loop import RunContext, TrainState
        from tuneforge.resume import check_rank_consistency
        from tuneforge.tracking import Trackers

        self.plan, self.config, self.meta = plan, plan.config, plan.meta
        config, meta = self.config, self.meta
        self.runtime = runtime = create_runtime(config)
        setup_logging(runtime.is_main)
        check_rank_consistency(config, plan.plugins, runtime)
        self.seed = meta.seed if meta.seed is not None else config.training.seed
        self.run_dir = Path(config.output.dir)
        self.started = time.perf_counter()
        self.store = ExampleStore()
        self.pools, split_info = build_collection(plan, self.store, self.seed)
        self._samplers()
        if runtime.is_main:
            dump_config(config, self.run_dir / "config.yaml")
            (self.run_dir / "splits.json").write_text(json.dumps(split_info, indent=2), encoding="utf-8")

        task = plan.main_task
        self.tokenizer = task.load_tokenizer()
        self.store.tokenize(self.tokenizer, config.data.max_length)
        encoder = self._build_encoder()
        if plan.adapter is not None:
            encoder = plan.adapter.apply(encoder, task)
        self.learner = EpisodeLearner(
            encoder, self.store, learn=meta.learn, top_layers=meta.top_layers, pooling=meta.pooling,
            head_scale=meta.head_scale, pad_token_id=self.tokenizer.pad_token_id or 0, device=runtime.device,
            autocast=runtime.autocast)
        if meta.learn == "top_layers":
            t0 = time.perf_counter()
            self.learner.precompute(range(len(self.store)))
            log.info("cached lower-layer states of %d examples in %.1fs", len(self.store), time.perf_counter() - t0)
        self.checkpoints = MetaCheckpoints(config, runtime)
        self.saved = self.checkpoints.restore()
        self.trackers = Trackers([cls(self.run_dir, config.model_dump(mode="json"))
                                  for cls in (plan.plugins.trackers.get(n) for n in config.trackers)]
                                 if runtime.is_main else [])
        if self.saved is not None:
            self.trackers.resume(self.saved.step)
        self.context = RunContext(config, self.run_dir, runtime, plan.plugins, task, encoder, self.tokenizer,
                                  TrainState(step=self.saved.step if self.saved else 0,
                                             world_size=runtime.num_processes),
                                  self.trackers, self.checkpoints.manager)
        log.info("meta: %d examples, labels train/val/test = %s; %d meta-learned parameters (learn=%s)",
                 len(self.store), "/".join(str(sum(len(p.labels) for p in self.pools[k])) for k in ("train", "val", "test")),
                 self.learner.num_parameters, meta.learn)

    def _build_encoder(self) -> torch.nn.Module:
        """The encoder of the task's model (``Task.build_encoder``): the main task's, prepared on
        its training data, or with a listed collection (no ``data.train``) the first meta-train task's."""
        from tuneforge.builders import load_records

        task, config, read = self.plan.main_task, self.config, self.plan.records
        if config.data.train is None and self.plan.listed.get("tasks"):
            first = self.plan.listed["tasks"][0]
            task, config, read = first.task, first.config, first.records
        task.prepare(load_records(config, task, read)["train"])
        if self.plan.adapter is not None:
            task.extra_model_kwargs.update(self.plan.adapter.model_kwargs())
        with torch.random.fork_rng():  # a task head built and dropped here does not shift the run's seeds
            return task.build_encoder(self.tokenizer)

    def _samplers(self) -> None:
        meta, seed, pools = self.meta, self.seed, self.pools
        self.train_sampler = EpisodeSampler(pools["train"], meta.ways, meta.shots, meta.query, seed, where="meta-train")
        self.val_sampler = (EpisodeSampler(pools["val"], meta.ways, meta.shots, meta.query, seed + 1, where="meta-val")
                            if pools["val"] and meta.val_episodes else None)
        self.test_samplers = {
            (w, k): EpisodeSampler(pools["test"], w, k, meta.eval.query, seed + 2, where=f"meta-test {_setting(w, k)}")
            for w in meta.eval.ways for k in meta.eval.shots
        }

    # -- what observers see -------------------------------------------------------------

    def _step_end(self, step: int, metrics: dict[str, float]) -> None:
        self.context.state.step = step
        self.plugins.call("tf_on_step_end", run=self.context, step=step, metrics=metrics)

    def _evaluated(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self.plugins.call("tf_on_evaluate", run=self.context, step=step, split=split, metrics=metrics)

    def _save(self, phase: str, step: int, state: dict[str, Any], starts: dict[str, torch.Tensor],
              results: dict[str, Any]) -> Path:
        path = self.checkpoints.save(phase, step, state, starts, results)
        self.plugins.call("tf_on_checkpoint", run=self.context, step=self.checkpoints.offset(phase) + step, path=path)
        return path

    @property
    def plugins(self) -> PluginManager:
        return self.plan.plugins

    # -- the phases -----------------------------------------------------------------------

    def score_val(self, step: int, named_starts: dict[str, torch.Tensor]) -> dict[str, float]:
        """Meta-val accuracy of each start, logged as one line."""
        meta = self.meta
        assert self.val_sampler is not None
        line, accuracies = {}, {}
        for name, start in named_starts.items():
            summary = meta_test(self.learner, start, self.val_sampler, meta.val_episodes, steps=meta.inner_steps,
                                lr=meta.inner_lr, optimizer=meta.inner_optimizer, runtime=self.runtime,
                                seed=self.seed).summary()
            line.update({f"{name}_accuracy": summary["accuracy"], f"{name}_ci95": summary["ci95"]})
            accuracies[name] = summary["accuracy"]
        self.trackers.log_metrics(step, line, "meta_val")
        self._evaluated(step, "meta_val", line)
        return accuracies

    def run(self) -> dict[str, Any]:
        meta, saved = self.meta, self.saved
        self.plugins.call("tf_on_fit_start", run=self.context)
        theta0 = self.learner.flat()
        starts: dict[str, torch.Tensor] = {"pretrained": theta0}
        done: dict[str, Any] = {}  # results of the finished phases
        if saved is not None:
            starts.update(saved.starts)
            done.update(saved.results)
        info = {"algorithm": meta.algorithm, "learn": meta.learn, "meta_steps": meta.meta_steps,
                "base_model": self.config.model.name_or_path, "splits": "splits.json"}
        if self.checkpoints.pending("meta_train", saved):
            self.train_meta(starts, done, info)
        if "multitask" in meta.eval.baselines and self.checkpoints.pending("multitask", saved):
            self.learner.load_flat(theta0)
            self.train_multitask(starts, done, info)
        names = ["meta"] + [b for b in ("pretrained", "multitask") if b in meta.eval.baselines]
        table = self.evaluate(starts, done, names)
        results = self.results(done, table)
        if self.runtime.is_main:
            (self.run_dir / "results.json").write_text(jsonio.dumps(results, indent=2), encoding="utf-8")
        from tuneforge.loop import FitResult

        self.plugins.call("tf_on_fit_end", run=self.context, result=FitResult(
            self.context.state, self.checkpoints.offset("evaluate") + len(self.test_samplers), "completed",
            done.get("meta_val") or {}, None, float(results["wall_seconds"])))
        return results

    def train_meta(self, starts: dict[str, torch.Tensor], done: dict[str, Any], info: dict[str, Any]) -> None:
        meta, saved, every = self.meta, self.saved, self.config.training.log_every_n_steps
        resume = saved.phase if saved is not None and saved.name == "meta_train" else None
        if resume is not None:
            log.info("resuming meta-training after meta step %d of %d", resume["step"], meta.meta_steps)

        def log_meta(step: int, metrics: dict[str, float]) -> None:
            if step % every == 0 or step == meta.meta_steps:
                self.trackers.log_metrics(step, metrics, "meta_train")
                log.info("meta step %d/%d loss=%.4f", step, meta.meta_steps, metrics["loss"])
            self._step_end(step, metrics)
            if self.val_sampler is not None and meta.val_every and step % meta.val_every == 0 and step < meta.meta_steps:
                self.score_val(step, {"meta": self.learner.flat()})

        t_meta = time.perf_counter()
        meta_hist = meta_train(
            self.learner, self.plan.algorithm_cls(meta), self.train_sampler, meta, self.runtime, seed=self.seed,
            on_step=log_meta, resume=resume, checkpoint_every=self.checkpoints.every(meta.meta_steps),
            checkpoint=lambda step, state: self._save("meta_train", step, state, starts, {
                **done, "meta_train_seconds": done.get("meta_train_seconds", 0.0) + time.perf_counter() - t_meta,
                "final_meta_loss": state["loss"]}),
        )
        starts["meta"] = self.learner.flat()
        done["meta_train_seconds"] = round(done.get("meta_train_seconds", 0.0) + meta_hist.seconds, 2)
        if meta_hist.steps:
            done["final_meta_loss"] = meta_hist.steps[-1]["loss"]
        if self.runtime.is_main:
            self.learner.export(self.run_dir / "meta_start", self.tokenizer, info)

    def train_multitask(self, starts: dict[str, torch.Tensor], done: dict[str, Any], info: dict[str, Any]) -> None:
        meta, saved, every = self.meta, self.saved, self.config.training.log_every_n_steps
        resume = saved.phase if saved is not None and saved.name == "multitask" else None
        offset = self.checkpoints.offset("multitask")

        def log_mt(step: int, metrics: dict[str, float]) -> None:
            if step % every == 0:
                self.trackers.log_metrics(offset + step, metrics, "multitask_train")
            self._step_end(offset + step, metrics)

        t_mt = time.perf_counter()
        mt_hist = multitask_train(
            self.learner, self.pools["train"], meta, self.runtime, seed=self.seed, on_step=log_mt, resume=resume,
            checkpoint_every=self.checkpoints.every(multitask_steps(meta)),
            checkpoint=lambda step, state: self._save("multitask", step, state, starts, {
                **done, "multitask_train_seconds":
                done.get("multitask_train_seconds", 0.0) + time.perf_counter() - t_mt}),
        )
        starts["multitask"] = self.learner.flat()
        done["multitask_train_seconds"] = round(done.get("multitask_train_seconds", 0.0) + mt_hist.seconds, 2)
        if self.runtime.is_main:
            self.learner.export(self.run_dir / "multitask_start", self.tokenizer, {**info, "algorithm": "multitask"})

    def evaluate(self, starts: dict[str, torch.Tensor], done: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """Meta-val (once) and each meta-test setting, checkpointed after each."""
        meta = self.meta
        eval_step = self.checkpoints.offset("evaluate")
        if self.val_sampler is not None and "meta_val" not in done:
            done["meta_val"] = self.score_val(eval_step, {name: starts[name] for name in names})
            self._save("evaluate", 0, {}, starts, done)
        steps = meta.eval.steps if meta.eval.steps is not None else meta.inner_steps
        lr = meta.eval.lr or meta.inner_lr
        contrastive = ContrastiveAdaptation.from_config(meta.eval) if meta.eval.adaptation == "contrastive" else None
        table: dict[str, Any] = done.setdefault("meta_test", {})
        for i, ((ways, shots), sampler) in enumerate(self.test_samplers.items(), start=1):
            setting = _setting(ways, shots)
            if setting in table:
                continue
            row: dict[str, Any] = {}
            scores: dict[str, EpisodeScores] = {}
            for name in names:
                scores[name] = meta_test(self.learner, starts[name], sampler, meta.eval.episodes, steps=steps, lr=lr,
                                         optimizer=meta.inner_optimizer, batch_size=meta.eval.batch_size,
                                         runtime=self.runtime, seed=self.seed, contrastive=contrastive)
                row[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in scores[name].summary().items()}
                row[name]["seconds"] = round(scores[name].seconds, 2)
            for base in names[1:]:
                diff, ci = mean_ci95([a - b for a, b in zip(scores["meta"].accuracies, scores[base].accuracies)])
                row[f"meta_minus_{base}"] = {"accuracy": round(diff, 4), "ci95": round(ci, 4)}
            table[setting] = row
            line = {f"{setting} {n}": row[n]["accuracy"] for n in names}
            self.trackers.log_metrics(eval_step + i, line, "meta_test")
            self._evaluated(eval_step + i, "meta_test", line)
            log.info("%s: %s", setting, "  ".join(f"{n} {row[n]['accuracy']:.3f}±{row[n]['ci95']:.3f}" for n in names))
            self.context.state.step = eval_step + i
            self._save("evaluate", i, {}, starts, done)
        return table

    def results(self, done: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
        meta = self.meta
        results: dict[str, Any] = {
            "status": "completed", "algorithm": meta.algorithm, "learn": meta.learn,
            "meta_train_seconds": done.get("meta_train_seconds"),
            "multitask_train_seconds": done.get("multitask_train_seconds"),
            "meta_start": str(self.run_dir / "meta_start"), "world_size": self.runtime.num_processes,
            "final_meta_loss": done.get("final_meta_loss"),
        }
        if "meta_val" in done:
            results["meta_val"] = done["meta_val"]
        results["meta_test"] = {_setting(w, k): table[_setting(w, k)] for w, k in self.test_samplers}
        results["fine_tune"] = {"steps": meta.eval.steps if meta.eval.steps is not None else meta.inner_steps,
                                "lr": meta.eval.lr or meta.inner_lr, "optimizer": meta.inner_optimizer,
                                "episodes": meta.eval.episodes, "query_per_class": meta.eval.query,
                                "adaptation": meta.eval.adaptation}
        if meta.eval.adaptation == "contrastive":
            results["fine_tune"].update({key: getattr(meta.eval, key) for key in (
                "contrastive_loss", "temperature", "pairs_per_example", "head", "logistic_c")})
        if self.saved is not None:
            results["resumed_from"] = str(self.saved.path)
        results["wall_seconds"] = round(time.perf_counter() - self.started, 2)
        return results


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of meta-test accuracy (mean ± 95% CI) per setting and start."""
    rows = results["meta_test"]
    names = [n for n in ("meta", "pretrained", "multitask") if any(n in r for r in rows.values())]
    lines = ["setting".ljust(16) + "".join(n.rjust(18) for n in names) + "meta-pretrained".rjust(20)]
    for setting, row in rows.items():
        cells = "".join(f"{row[n]['accuracy'] * 100:7.2f} ± {row[n]['ci95'] * 100:5.2f}    " for n in names)
        diff = row.get("meta_minus_pretrained")
        tail = f"{diff['accuracy'] * 100:+7.2f} ± {diff['ci95'] * 100:5.2f}" if diff else ""
        lines.append(setting.ljust(16) + cells + tail.rjust(20))
    return "\n".join(lines)
