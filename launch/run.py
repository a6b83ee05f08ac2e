"""Launcher entry point: the same code path as ``tuneforge train``.

    accelerate launch launch/run.py --config configs/quickstart.yaml training.lr=3e-5
    torchrun --nproc_per_node 2 launch/run.py --config configs/quickstart.yaml
"""

import sys

from tuneforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
