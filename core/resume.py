"""Where a run starts: every rank agrees on the config, the run directory is set up, and an
interrupted run continues from its checkpoint at the exact data position."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from tuneforge.checkpoint import CheckpointManager, read_state
from tuneforge.config import RunConfig, diff_keys, dump_config
from tuneforge.errors import CheckpointError, DistributedError, TuneforgeError
from tuneforge.loop import TrainState
from tuneforge.plugin_manager import PluginManager

log = logging.getLogger("tuneforge")


def check_rank_consistency(config: RunConfig, plugins: PluginManager, runtime: Any) -> None:
    """Every rank must run the same resolved config and plugin set."""
    if runtime.num_processes == 1:
        return
    mine = {"config": config.model_dump(mode="json"), "plugins": sorted(p.name for p in plugins.plugins)}
    everyone = runtime.all_gather_object(mine)
    reference = everyone[0]
    for rank, other in enumerate(everyone[1:], start=1):
        if other != reference:
            diff = [key.removeprefix("config.") for key in diff_keys(reference, other)]
            raise DistributedError(
                f"rank {rank} differs from rank 0 in: {', '.join(diff)}. Every rank must get the same "
                "config file, overrides and installed plugins."
            )


def prepare_run_dir(config: RunConfig, checkpoints: CheckpointManager, runtime: Any) -> Path | None:
    """The checkpoint to resume from (None: a fresh start). The main process clears old
    checkpoints on ``output.overwrite``, sets aside those after the resume point, and writes
    the resolved ``config.yaml``; every rank waits for it."""
    resume_from = checkpoints.resolve(config.resume)
    if runtime.is_main:
        if resume_from is None and config.output.overwrite:
            shutil.rmtree(checkpoints.root, ignore_errors=True)
        elif resume_from is not None:
            resumed = read_state(resume_from)
            checkpoints.set_aside_after(int(resumed["step"]), resumed.get("best_step"))
        dump_config(config, Path(config.output.dir) / "config.yaml")
    runtime.barrier()
    return resume_from


def resume_position(saved: dict[str, Any], world_size: int, batch_size: int, source: Path) -> int:
    """Per-rank micro-batches of the current epoch to skip when resuming ``saved``.

    The sampler order depends only on (seed, epoch) and rank r takes global batches
    r, r + W, ...; so the position is "samples of this epoch consumed", which maps to
    any world size whose global micro-batch divides it."""
    old_world = int(saved.get("world_size", 1))
    old_batch = int(saved.get("micro_batch_size") or batch_size)
    done = int(saved.get("batch_in_epoch", 0))
    if old_world == world_size and old_batch == batch_size:
        return done
    samples = done * old_world * old_batch
    if samples % (world_size * batch_size):
        raise DistributedError(
            f"checkpoint {source} stopped {samples} samples into epoch {saved.get('epoch', 0)} "
            f"({old_world} processes x batch {old_batch}); {world_size} processes x batch {batch_size} cannot "
            f"continue there exactly. Resume with a world size and training.batch_size whose product divides "
            f"{samples} (e.g. {old_world} x {old_batch})."
        )
    if old_world * old_batch != world_size * batch_size:
        log.warning("resuming with a global micro-batch of %d samples (checkpoint: %d); steps after the resume "
                    "see a different batch size", world_size * batch_size, old_world * old_batch)
    return samples // (world_size * batch_size)


def restore(runtime: Any, resume_from: Path | None, batch_size: int) -> TrainState:
    """The loop's state: fresh, or the checkpoint's, with model/optimizer/schedule loaded into
    the prepared objects and the data position mapped to this world size."""
    if resume_from is None:
        return TrainState(world_size=runtime.num_processes, micro_batch_size=batch_size)
    saved = read_state(resume_from)
    batch_in_epoch = resume_position(saved, runtime.num_processes, batch_size, resume_from)
    try:
        runtime.load_state(resume_from, world_size=int(saved.get("world_size", 1)))
    except TuneforgeError:
        raise
    except Exception as exc:  # passed its checksums, but does not fit this model/optimizer
        raise CheckpointError(
            f"checkpoint {resume_from} could not be loaded ({type(exc).__name__}: {exc}); was it written "
            "with another model, adapter or optimizer setup? Resume with the run's own config, or resume=never"
        ) from exc
    state = TrainState(**{**saved, "batch_in_epoch": batch_in_epoch,
                          "world_size": runtime.num_processes, "micro_batch_size": batch_size})
    log.info("resumed from %s at step %d", resume_from, state.step)
    return state
