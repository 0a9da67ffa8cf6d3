#!/usr/bin/env bash
# Prints the path of a docker-archive of a locally built image (for `ctr images import` on the real
# node), exporting it only when no archive of the same image ID exists yet.
#   hack/image-archive.sh localhost/rlhf-operator/operator:dev
set -euo pipefail
image=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/containers-env.sh
source "$root/hack/containers-env.sh"
id=$(buildah inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null) \
  || { echo "$image is not built: run \`make images\`" >&2; exit 1; }
name=$(basename "${image%%:*}")
archive=$RLHF_IMAGES_CACHE/$name-${id:0:12}.tar
if [ ! -s "$archive" ]; then
  rm -f "$RLHF_IMAGES_CACHE/$name"-*.tar  # older builds of this image
  buildah push --quiet "$image" "docker-archive:$archive.part:$image" >&2
  mv "$archive.part" "$archive"
fi
echo "$archive"
