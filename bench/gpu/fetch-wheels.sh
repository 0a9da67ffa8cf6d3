#!/usr/bin/env bash
# Downloads the wheels bench/gpu/run.sh needs on a GPU machine without network (python 3.12,
# x86_64) that already has torch, transformers, accelerate, peft, numpy, pyyaml, safetensors and
# tokenizers: TRL and datasets with their dependencies. They land in .whl/ (git-ignored); carry it
# with the command. Versions are the ones pinned in pyproject.toml / resolved in the project venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl
WHEELS=(
    trl==1.16.0          # GRPO/RLOO (pure python)
    datasets==5.2.0      # TRL's dataset type (pure python)
    dill==0.4.1          # datasets
    multiprocess==0.70.19 # datasets (py312 wheel)
    xxhash==4.1.0        # datasets (binary)
    pyarrow==24.0.0      # datasets needs >=24; 24 is the smallest wheel (47 MiB, 26.0.1 is 52)
    pandas==3.1.1        # datasets, trl (binary)
    python-dateutil==2.9.0.post0 # pandas
    six==1.17.0          # python-dateutil
)
# Comments are not arguments: keep the NAME==VERSION words only.
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
du -sb .whl | awk '{printf "%.1f MiB in .whl\n", $1/1048576}'
ls -la .whl
