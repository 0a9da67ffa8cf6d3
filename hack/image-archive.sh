#!/usr/bin/env bash
# Prints the path of one docker-archive holding the given locally built images (for `ctr images import`
# on the real node), exporting it only when no archive of the same image IDs exists yet. Layers the
# images share (the worker's and trainer's venv) are stored once.
#   hack/image-archive.sh localhost/rlhf-operator/operator:dev [IMAGE...]
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: hack/image-archive.sh IMAGE..." >&2; exit 2; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/containers-env.sh
source "$root/hack/containers-env.sh"
ids=""
for image in "$@"; do
  id=$(buildah inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null) \
    || { echo "$image is not built: run \`make images\`" >&2; exit 1; }
  ids="$ids $image=$id"
done
names=$(echo "$*" | sha256sum | cut -c1-8)
archive=$RLHF_IMAGES_CACHE/node-images-$names-$(echo "$ids" | sha256sum | cut -c1-12).tar
if [ ! -s "$archive" ]; then
  rm -f "$RLHF_IMAGES_CACHE/node-images-$names"-*.tar  # older builds of the same images
  podman save --quiet --multi-image-archive --format docker-archive --output "$archive.part" "$@" >&2
  mv "$archive.part" "$archive"
fi
echo "$archive"
