#!/usr/bin/env bash
# GPU check of real model sizes (issue 12), one command, < 8 min on one H100, no network:
#   bash bench/gpu/run.sh                      # on the GPU machine, with .whl/ (bench/gpu/fetch-wheels.sh) carried
#   BENCH_NO_WHEELS=1 PYTHON=.venv/bin/python bash bench/gpu/run.sh --device cpu --tiny   # the CPU smoke test
# Figures go to $OUT (bench-gpu.json, bench-gpu.md) when OUT is set. Extra arguments go to bench_gpu.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${BENCH_NO_WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/operator
else
    export PYTHONPATH=$PWD/operator
fi
PY=${PYTHON:-python3}
"$PY" - <<'PYEOF' || true
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "pyarrow", "pandas", "tokenizers"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "NOT IMPORTABLE:", type(exc).__name__, str(exc)[:200])
try:
    import torch
    print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as exc:
    print("torch check failed:", exc)
PYEOF
exec "$PY" bench/gpu/bench_gpu.py --scenario-timeout "${SCENARIO_TIMEOUT:-140}" "$@"
