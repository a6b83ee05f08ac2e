"""``tuneforge search --config X [--workers N] [--resume] [--show] [--storage URL] [key=value ...]``.

Runs the study described by the config's ``search:`` section (docs/search.md);
``--show`` prints the leaderboard of an existing study and runs nothing.
"""

from __future__ import annotations

import argparse
import sys

from tuneforge.commands.train import add_config_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="hyperparameter search: a study of trials, each a run with overrides")
    add_config_arguments(p)
    p.add_argument("--workers", type=int, default=None, help="trials run at once on this machine")
    p.add_argument("--resume", action="store_true",
                   help="continue (or join) the study in its storage; stale RUNNING trials are failed and retried")
    p.add_argument("--show", action="store_true", help="print the leaderboard of the study and exit")
    p.add_argument("--storage", default=None, help="Optuna RDB URL (default: sqlite in the study directory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneforge.search.runner import StudyRunner

    def echo(msg: str) -> None:
        print(msg, flush=True)

    runner = StudyRunner(args.config, args.overrides, workers=args.workers, resume=args.resume or args.show,
                         storage=args.storage, echo=echo)
    if args.show:
        from tuneforge.search.report import leaderboard

        study = runner.load_existing()
        print(leaderboard(study))
        return 0
    echo(f"study '{runner.study_name}': strategy {runner.search.strategy}, {runner.search.n_trials} trials, "
         f"{runner.workers} worker(s), objectives {[o.metric for o in runner.objectives]}, dir {runner.study_dir}")
    try:
        study = runner.run()
    except KeyboardInterrupt:
        print("interrupted: running trials were stopped; continue with --resume", file=sys.stderr)
        return 130
    from tuneforge.search.report import leaderboard

    print(leaderboard(study, limit=10))
    print(f"report: {runner.study_dir / 'report.md'}  best config: {runner.study_dir / 'best_config.yaml'}")
    return 0
