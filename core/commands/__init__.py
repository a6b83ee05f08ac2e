"""Subcommands of the ``tuneforge`` CLI, one module each."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def stdout_kept_for_results() -> Iterator[None]:
    """Send whatever is printed to stdout during the work to stderr.

    The commands print one machine-readable result (JSON) on stdout, so that
    ``tuneforge train ... | jq`` works; libraries print there too (DeepSpeed's logger,
    created on its first import, writes its warnings to ``sys.stdout``). Inside this block
    ``sys.stdout`` is stderr, so such handlers are bound to stderr for good.
    """
    with contextlib.redirect_stdout(sys.stderr):
        yield
