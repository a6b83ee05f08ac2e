#!/usr/bin/env bash
# The GPU proof of issue 16 in one command (benchmarks/gpu/README.md):
#   bash benchmarks/gpu/run.sh [--dry-run] [--only 1,3] [--budget-s 450] ...   the checks (gpu_checks.py)
#   bash benchmarks/gpu/run.sh --stage                                          staging call: park the GGUF's
#                                                                               first part in /tmp/gpu-stage
# Installs the wheels under .whl/ that this Python lacks (into $GPU_BENCH_SITE, default /tmp/site),
# builds tuneforge from this tree there when it is not importable, then runs the checks; their JSON
# lines go to stdout and $OUT/gpu.jsonl (./gpu-out without $OUT).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--stage" ]]; then
  mkdir -p /tmp/gpu-stage && cp .gpu-assets/stage/* /tmp/gpu-stage/ && ls -l /tmp/gpu-stage
  exit $?
fi

SITE=${GPU_BENCH_SITE:-/tmp/site}
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  # only the wheels whose exact version is not importable already (a warm machine keeps $SITE)
  mapfile -t NEEDED < <("$PY" - <<'EOF'
import re
from importlib import metadata
from pathlib import Path
for whl in sorted(Path(".whl").glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    try:
        installed = metadata.version(re.sub(r"[-_.]+", "-", name).lower())
    except metadata.PackageNotFoundError:
        installed = None
    if installed != version:
        print(whl)
EOF
)
  if ((${#NEEDED[@]})); then
    echo "installing into $SITE: ${NEEDED[*]}" >&2
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${NEEDED[@]}" \
      || exit 1
  fi
fi
if ! "$PY" -c "import tuneforge.plugins.causal_lm" 2>/dev/null; then
  echo "building tuneforge from $(pwd) into $SITE" >&2
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . || exit 1
fi
exec "$PY" benchmarks/gpu/gpu_checks.py "$@"
