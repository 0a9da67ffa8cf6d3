#!/usr/bin/env bash
# Makes the real node's sandbox ("pause") image from Debian's static catatonit, with no registry:
#   hack/build-pause-image.sh IMAGE ARCHIVE     -> ARCHIVE, a docker-archive `ctr images import` reads
set -euo pipefail
image=$1 archive=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/containers-env.sh
source "$root/hack/containers-env.sh"
catatonit=$(command -v catatonit) || { echo "catatonit is missing: apt-get install catatonit" >&2; exit 1; }
container=$(buildah from scratch)
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
buildah copy --quiet "$container" "$catatonit" /pause >/dev/null
buildah config --entrypoint '["/pause", "-P"]' --user 65535:65535 "$container"
buildah commit --quiet "$container" "$image" >/dev/null
mkdir -p "$(dirname "$archive")"
rm -f "$archive.part"
buildah push --quiet "$image" "docker-archive:$archive.part:$image"
mv "$archive.part" "$archive"
