"""Run every ``benchmarks/bench_*.py`` and print each one's JSON line.

    python benchmarks/run_all.py            # full runs (tens of minutes on a laptop CPU)
    python benchmarks/run_all.py --quick    # smoke runs: every script gets --quick
    python benchmarks/run_all.py -k overhead -k padding   # only scripts whose name contains these

Convention for a benchmark script: standalone, prints ONE JSON line (with a "benchmark"
key) of figures measured side by side in the same run, accepts ``--quick`` if it has a
cheaper smoke mode (scripts without one run in full even under ``--quick``), and prints
``{"benchmark": ..., "skipped": reason}`` when its data or hardware is missing. A script
that fails or prints no JSON gets a ``{"benchmark": name, "error": ...}`` line here and
makes the exit status 1. ``--out FILE`` also appends the lines to FILE (JSON Lines).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("-k", action="append", default=[], metavar="TEXT", help="only scripts containing TEXT")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    args = parser.parse_args()
    scripts = sorted(p for p in HERE.glob("bench_*.py") if not args.k or any(k in p.stem for k in args.k))
    failed = False
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        started = time.perf_counter()
        quick = args.quick and "--quick" in script.read_text(encoding="utf-8")  # not every script has one
        cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            result = last_json_line(proc.stdout)
            if proc.returncode != 0 or result is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                result = {"benchmark": name, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
        except subprocess.TimeoutExpired:
            result = {"benchmark": name, "error": f"timed out after {args.timeout:.0f} s"}
        failed = failed or "error" in result
        result.setdefault("script", script.name)
        result.setdefault("wall_s", round(time.perf_counter() - started, 1))
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with args.out.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
