"""``tuneforge library list|show|add|remove [--library DIR_OR_URL]``: the study library.

The library (docs/library.md) is ``--library``, else ``$TUNEFORGE_LIBRARY``. ``list`` prints
one line per entry (``--json``: one JSON object per line), ``show ID`` prints an entry as
JSON, ``add STUDY...`` imports finished studies from their storage (a study directory or
``<storage URL>#<study name>``), ``remove ID...`` deletes entries. Unusable entries are
skipped with a warning on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from tuneforge.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("library", help="the study library that the portfolio strategy learns from")
    p.add_argument("--library", "-l", default=None, help="directory or database URL (default: $TUNEFORGE_LIBRARY)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="one line per entry")
    ls.add_argument("--json", action="store_true", help="one JSON object per entry and line")
    show = actions.add_parser("show", help="an entry as JSON")
    show.add_argument("id")
    add = actions.add_parser("add", help="import finished studies (study directories or URL#name)")
    add.add_argument("studies", nargs="+")
    rm = actions.add_parser("remove", help="delete entries")
    rm.add_argument("ids", nargs="+")
    p.set_defaults(func=run)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from tuneforge.search.library import ENV, import_study, library_location, open_library

    location = library_location(args.library)
    if not location:
        raise ConfigError(f"no library: pass --library DIR_OR_URL or set {ENV}")
    library = open_library(location)
    if args.action == "list":
        entries = library.entries(warn=_warn)
        if args.json:
            for e in entries:
                print(json.dumps(e.summary()))
            return 0
        print(f"library {library.location}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
        for e in entries:
            s = e.summary()
            best = f"{s['best']:.4g}" if isinstance(s["best"], float) else "-"
            print(f"{s['id']}  {s['kind']}  task={s['task']}  model={s['model']}  n_train={s['n_train']}  "
                  f"{s['metric']} ({s['direction'][:3]}) best={best}  trials={s['trials']}")
        return 0
    if args.action == "show":
        print(library.get(args.id).to_json())
        return 0
    if args.action == "add":
        for ref in args.studies:
            entry = import_study(ref)
            print(json.dumps({"added": library.add(entry), "from": entry.source}))
        return 0
    for entry_id in args.ids:
        library.remove(entry_id)
        print(json.dumps({"removed": entry_id}))
    return 0
