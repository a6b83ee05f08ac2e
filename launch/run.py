"""Launcher entry point: the same code path as ``tuneforge train`` (see docs/distributed.md).

    torchrun --nproc_per_node 2 launch/run.py --config configs/quickstart.yaml training.lr=3e-5
    accelerate launch --config_file launch/accelerate/ddp.yaml launch/run.py --config configs/quickstart.yaml
    accelerate launch --config_file launch/accelerate/deepspeed_zero3.yaml launch/run.py --config ...
    sbatch --nodes 2 launch/slurm.sbatch configs/quickstart.yaml          # multi-node (SLURM)
"""

import sys

from tuneforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
