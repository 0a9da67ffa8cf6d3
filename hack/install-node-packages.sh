#!/usr/bin/env bash
# Installs, from Debian, what the images and the real node need: buildah/podman/mmdebstrap to build and
# run images without Docker, containerd + runc + CNI plugins + iptables for the node, catatonit for its
# pause image. Skips the install when everything is there; uses sudo when not root.
set -euo pipefail
packages=(buildah podman mmdebstrap uidmap containerd runc containernetworking-plugins iptables catatonit)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[packages] all installed" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
echo "[packages] installing ${missing[*]}" >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
