"""`tuneforge train --config CONFIG` with an extra override on rank 1 only
(``TF_RANK1_OVERRIDE``): the rank-consistency check must stop every rank."""

import os
import sys

from tuneforge.cli import main

if __name__ == "__main__":
    extra = [os.environ["TF_RANK1_OVERRIDE"]] if os.environ.get("RANK") == "1" else []
    sys.exit(main(["train", "--config", sys.argv[1], *extra]))
