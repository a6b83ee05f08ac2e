"""``tuneforge plugins``: what loaded, from where, and which hooks each implements."""

from __future__ import annotations

import argparse
import json

from tuneforge.plugin_manager import COMPOSITION_HOOKS, PluginManager


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list loaded plugins, their package, hooks and registrations")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pm = PluginManager.default().build_registries()
    registered: dict[str, dict[str, list[str]]] = {}
    for attr in COMPOSITION_HOOKS.values():
        for entry in getattr(pm, attr).entries():
            registered.setdefault(entry.plugin, {}).setdefault(attr, []).append(entry.name)
    rows = [
        {
            "name": info.name,
            "module": info.module,
            "package": info.distribution,
            "version": info.version,
            "hooks": info.hooks,
            "registers": registered.get(info.name, {}),
        }
        for info in pm.plugins
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        origin = f"{row['package']} {row['version']}" if row["package"] else "registered in code"
        print(f"{row['name']}  ({row['module']}, {origin})")
        print(f"    hooks: {', '.join(row['hooks']) or '-'}")
        for kind, names in row["registers"].items():
            print(f"    {kind}: {', '.join(names)}")
    return 0
