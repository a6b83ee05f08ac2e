"""Subcommands of the ``tuneforge`` CLI, one module each."""
