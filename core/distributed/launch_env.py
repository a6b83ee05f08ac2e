"""What the launcher told this process through its environment.

Read before any process group exists: the world size ``torchrun``, ``accelerate launch`` or
MPI announced, whether a flag is set, and the one launch that cannot work (accelerate's
*simple* launcher: ``accelerate launch --cpu`` or a config with ``distributed_type:
MULTI_CPU`` starts one Python process meant for ``mpirun``; without MPI, ``--num_processes
2`` still starts one process, so it is refused with the command that works).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from tuneforge.errors import DistributedError

_MPI_WORLD = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

#: What ``accelerate launch --use_deepspeed`` passes through the environment. The strategy
#: folds these into its DeepSpeed config; the DeepSpeed runtime then clears them.
LAUNCHER_DEEPSPEED_ENV = (
    "ACCELERATE_CONFIG_DS_FIELDS",
    "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
    "ACCELERATE_GRADIENT_CLIPPING",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
    "ACCELERATE_DEEPSPEED_CONFIG_FILE",
    "ACCELERATE_DEEPSPEED_ZERO3_INIT",
    "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL",
)


def _env_int(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = env.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                raise DistributedError(f"environment variable {name}={value!r} is not a whole number") from None
    return default


def launched_world_size(env: Mapping[str, str] | None = None) -> int:
    """World size the launcher announced through the environment (1 if none)."""
    return _env_int(os.environ if env is None else env, ("WORLD_SIZE", *_MPI_WORLD), 1)


def truthy(value: str | None) -> bool:
    """An environment flag that is set: ``1``, ``true`` or ``yes``."""
    return str(value).strip().lower() in ("1", "true", "yes")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refuse_simple_cpu_launcher(env: Mapping[str, str]) -> None:
    """Refuse accelerate's simple launcher asked for several processes without MPI (one starts)."""
    if (
        launched_world_size(env) == 1
        and env.get("ACCELERATE_USE_CPU", "").lower() == "true"
        and env.get("MASTER_ADDR")
        and "LOCAL_RANK" not in env
    ):
        # accelerate's simple launcher sets MASTER_ADDR only when --num_processes > 1.
        raise DistributedError(
            "`accelerate launch --cpu --num_processes N` (or an accelerate config with distributed_type: "
            "MULTI_CPU) starts ONE process here: that launcher expects mpirun (--mpirun_hostfile). Use "
            "`accelerate launch --multi_gpu --num_processes N` (tuneforge runs the ranks on CPU with gloo), "
            "`torchrun --nproc_per_node N launch/run.py`, or `tuneforge train --nproc N`."
        )
