"""Built-in trackers: ``jsonl``, ``tensorboard``, ``mlflow`` and ``wandb``.

Select any number in the config (``trackers: [jsonl, tensorboard]``); they run on
the main process only. Backends whose package is missing fail at preflight with
an install hint (``Tracker.check_available``).

Where they write (all under the run directory unless told otherwise):

* ``jsonl``: ``metrics.jsonl`` (one line per log call), ``params.json``, ``status.json``.
* ``tensorboard``: ``<run>/tensorboard/`` event files (``tensorboard --logdir runs``).
* ``mlflow``: ``MLFLOW_TRACKING_URI`` if set (a server, ``sqlite:///...``, ``databricks``),
  else a SQLite store ``<run>/mlflow/mlflow.db`` with artifacts in ``<run>/mlflow/artifacts``.
  The experiment is ``MLFLOW_EXPERIMENT_NAME`` (default ``tuneforge``).
* ``wandb``: offline mode unless ``WANDB_MODE`` says otherwise; files in ``<run>/wandb``;
  project ``WANDB_PROJECT`` (default ``tuneforge``). ``wandb sync`` uploads later.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from tuneforge import hookimpl, jsonio
from tuneforge.errors import PluginError
from tuneforge.tracking import Tracker


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"lr": 1}}`` -> ``{"training.lr": 1}``; lists and None become strings."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


def plain(value: Any) -> Any:
    """``value`` as plain JSON types (version strings and paths become ``str``)."""
    return json.loads(json.dumps(value, default=str))


def require_package(tracker: str, module: str, install: str) -> None:
    """Raise a PluginError with an install hint when ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise PluginError(
            f"tracker '{tracker}' needs the '{module}' package, which is not installed: "
            f"run `pip install {install}`, or remove '{tracker}' from the config's trackers list"
        )


class JsonlTracker(Tracker):
    """Appends one JSON object per log call to ``<run_dir>/metrics.jsonl``;
    hyperparameters and system info go to ``<run_dir>/params.json`` and the final
    status (completed, early_stopped, failed) to ``<run_dir>/status.json``."""

    def log_params(self, params: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "params.json").write_text(json.dumps(params, indent=2, default=str), encoding="utf-8")
        self._write_status("running")

    def log_metrics(self, step: int, metrics: dict[str, float], split: str) -> None:
        line = {"step": step, "split": split, "time": round(time.time(), 3), **metrics}
        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(jsonio.dumps(line) + "\n")

    def resume(self, step: int) -> None:
        """Keep ``metrics.jsonl`` one line per (split, step) of the run's one history: lines an
        interrupted attempt wrote after the resumed ``step`` (and a line cut short by a kill)
        move to ``metrics.superseded.jsonl``, since the resumed run logs those steps again."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep: list[str] = []
        drop: list[str] = []
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                logged_step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                logged_step = None
            (keep if line.endswith("\n") and logged_step is not None and logged_step <= step else drop).append(line)
        if not drop:
            return
        with (self.run_dir / "metrics.superseded.jsonl").open("a", encoding="utf-8") as fh:
            fh.writelines(line if line.endswith("\n") else line + "\n" for line in drop)
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, path)

    def finish(self, status: str) -> None:
        self._write_status(status)

    def _write_status(self, status: str) -> None:
        payload = {"status": status, "time": round(time.time(), 3), "pid": os.getpid()}
        (self.run_dir / "status.json").write_text(json.dumps(payload), encoding="utf-8")


class TensorBoardTracker(Tracker):
    """Scalars as ``<split>/<metric>``, the resolved config and system info as text,
    and the hyperparameters with the last validation metrics in the HPARAMS tab."""

    requires = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        super().__init__(run_dir, config)
        self.writer: Any = None
        self.last: dict[str, float] = {}

    def check_available(self) -> None:
        require_package("tensorboard", "tensorboard", "tensorboard")

    def _open(self) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        return self.writer

    def log_params(self, params: dict[str, Any]) -> None:
        writer = self._open()
        for key, value in plain(params).items():
            text = yaml.safe_dump(value, sort_keys=False) if isinstance(value, dict) else str(value)
            writer.add_text(key, "```\n" + text + "\n```", global_step=0)

    def log_metrics(self, step: int, metrics: dict[str, float], split: str) -> None:
        writer = self._open()
        for name, value in metrics.items():
            writer.add_scalar(f"{split}/{name}", float(value), global_step=step)
            if split != "train":
                self.last[f"{split}/{name}"] = float(value)
        writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        hp = {k: v for k, v in flatten(self.config).items() if not k.startswith("plugins")}
        hp["status"] = status
        for summary in hparams(hp, {f"hparam/{k}": v for k, v in self.last.items()}):
            self.writer.file_writer.add_summary(summary)
        for key, value in self.last.items():
            self.writer.add_scalar(f"hparam/{key}", value)
        self.writer.close()


class MlflowTracker(Tracker):
    """One MLflow run per training run: flattened config as params, system info as
    tags, metrics as ``<split>/<metric>``, the resolved config as ``config.yaml`` artifact."""

    requires = "mlflow"

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        super().__init__(run_dir, config)
        self.client: Any = None
        self.run_id: str | None = None

    def check_available(self) -> None:
        require_package("mlflow", "mlflow", "mlflow")

    @property
    def tracking_uri(self) -> str:
        store = (self.run_dir / "mlflow").resolve()
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store / 'mlflow.db'}"

    def _start(self) -> None:
        from mlflow import MlflowClient

        uri = self.tracking_uri
        if uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ:
            (self.run_dir / "mlflow").mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "tuneforge")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        elif "MLFLOW_TRACKING_URI" in os.environ:
            experiment_id = self.client.create_experiment(name)
        else:
            artifacts = (self.run_dir / "mlflow" / "artifacts").resolve().as_uri()
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.resolve().name,
                                     tags={"tuneforge.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        if self.client is None:
            self._start()
        params = plain(params)
        config = flatten(params.get("config") or self.config)
        other = flatten({k: v for k, v in params.items() if k != "config"})
        self.client.log_batch(
            self.run_id,
            params=[Param(k, str(v)[:6000]) for k, v in config.items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in other.items()],
        )
        self.client.log_text(self.run_id, yaml.safe_dump(params.get("config") or self.config, sort_keys=False),
                             "config.yaml")

    def log_metrics(self, step: int, metrics: dict[str, float], split: str) -> None:
        from mlflow.entities import Metric

        if self.client is None:
            self._start()
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(f"{split}/{k}", float(v), now, step) for k, v in metrics.items()]
        )

    def finish(self, status: str) -> None:
        if self.client is None:
            return
        self.client.set_tag(self.run_id, "tuneforge.status", status)
        self.client.set_terminated(self.run_id, "FAILED" if status == "failed" else "FINISHED")


WANDB_MODES = ("offline", "online", "disabled", "shared")


class WandbTracker(Tracker):
    """Weights & Biases; offline by default so it works without network or account."""

    requires = "wandb"

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        super().__init__(run_dir, config)
        self.run: Any = None

    def check_available(self) -> None:
        require_package("wandb", "wandb", "wandb")

    def log_params(self, params: dict[str, Any]) -> None:
        import wandb

        directory = self.run_dir / "wandb"
        directory.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE", "offline")
        if mode not in WANDB_MODES:
            raise PluginError(f"WANDB_MODE={mode!r} is not a W&B mode; use one of {', '.join(WANDB_MODES)}")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "tuneforge"),
            name=self.run_dir.resolve().name,
            dir=str(directory),
            mode=mode,  # type: ignore[arg-type]  # checked against WANDB_MODES
            config=plain(params.get("config", self.config)),
        )
        self.run.summary.update(flatten(plain({k: v for k, v in params.items() if k != "config"})))

    def log_metrics(self, step: int, metrics: dict[str, float], split: str) -> None:
        if self.run is not None:
            self.run.log({f"{split}/{k}": float(v) for k, v in metrics.items()}, step=step)

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run.summary["status"] = status
            self.run.finish(exit_code=1 if status == "failed" else 0)


@hookimpl
def tf_register_trackers(register: Any) -> None:
    register("jsonl", JsonlTracker)
    register("tensorboard", TensorBoardTracker)
    register("mlflow", MlflowTracker)
    register("wandb", WandbTracker)
