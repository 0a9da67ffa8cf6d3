#!/usr/bin/env bash
# Creates the virtual environment and installs the project with every extra, versions from pyproject.toml.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is required" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check uv==0.13.9
"$venv/bin/uv" pip install --python "$venv/bin/python" --quiet -e '.[operator,train,cli,dev]'
