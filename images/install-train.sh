#!/bin/sh
# Installs the `train` extra into /opt/venv (used by the worker and trainer Dockerfiles), then checks
# that torch is the pinned version and came from where TORCH_SOURCE says.
#
#   sh images/install-train.sh TORCH_SOURCE TORCH_INDEX_URL UV_VERSION
#     TORCH_SOURCE  pypi: the pinned wheel from PyPI alone (on Linux the CUDA build, which also runs on CPU)
#                   cpu-index: the CPU build (`X+cpu`) from TORCH_INDEX_URL, then the rest from PyPI
# uv caches in $UV_CACHE_DIR when that directory exists (a buildah build mounts the host's uv cache
# there), and caches nothing otherwise, so no cache ends up in the image.
set -eu
source=$1 index=$2 uv_version=$3
case "$source" in
  pypi | cpu-index) ;;
  *) echo "TORCH_SOURCE must be 'pypi' or 'cpu-index', not '$source'" >&2; exit 2 ;;
esac
[ -d "${UV_CACHE_DIR:-/nonexistent}" ] || export UV_NO_CACHE=1
python -m venv /tmp/uv
/tmp/uv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check "uv==$uv_version"
python -m venv --without-pip /opt/venv
torch=$(python images/pins.py train torch)
install() { /tmp/uv/bin/uv pip install --quiet --python /opt/venv/bin/python --link-mode=copy --compile-bytecode "$@"; }
if [ "$source" = cpu-index ]; then
  install --index-url "$index" --extra-index-url https://pypi.org/simple "$torch+cpu"
fi
install ".[train]"
rm -rf /tmp/uv
/opt/venv/bin/python - "$torch" "$source" <<'PY'
import sys

import torch

pinned, source = sys.argv[1].split("==")[1], sys.argv[2]
version = torch.__version__
if version.split("+")[0] != pinned:
    sys.exit(f"torch {version} is installed, but pyproject.toml pins {pinned}")
if source == "cpu-index" and (not version.endswith("+cpu") or torch.cuda.is_available()):
    sys.exit(f"TORCH_SOURCE=cpu-index should give the CPU build of torch, got {version}")
print(f"torch {version} from {source}")
PY
