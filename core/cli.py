"""The ``tuneforge`` command. Each subcommand lives in ``tuneforge.commands.<name>``
and exposes ``add_parser(subparsers)`` setting ``func`` (returns an exit code)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from tuneforge import __version__
from tuneforge.errors import TuneforgeError

COMMANDS = ("train", "validate", "estimate", "plugins", "export", "evaluate", "predict", "chat", "runs", "report",
            "search", "library", "tune", "meta")

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description="Fine-tune language models; search their recipes.")
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"tuneforge.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TuneforgeError as exc:
        if os.environ.get("TUNEFORGE_TRACEBACK", "") not in ("", "0"):
            traceback.print_exception(exc)
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
