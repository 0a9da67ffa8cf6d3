#!/usr/bin/env bash
# Installs what renders the Grafana dashboard from a real run's series (hack/dashboard.py): Debian's
# Prometheus (its binaries unpacked from the package into the tools cache, so no service is set up
# or started) and headless Chromium. Grafana itself is not packaged by Debian. Skips what is there;
# uses sudo when not root.
set -euo pipefail
TOOLS=${RLHF_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rlhf-operator/tools}
dir=$TOOLS/prometheus
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
updated=""
update() { [ -n "$updated" ] || { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq; updated=1; }; }
if [ ! -x "$dir/prometheus" ] || [ ! -x "$dir/promtool" ]; then
  echo "[dashboard] unpacking Debian's prometheus into $dir" >&2
  scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
  (cd "$scratch" && { apt-get download prometheus 2>/dev/null || { update; apt-get download prometheus; }; })
  dpkg-deb -x "$scratch"/prometheus_*.deb "$scratch/x"
  mkdir -p "$dir" && cp "$scratch/x/usr/bin/prometheus" "$scratch/x/usr/bin/promtool" "$dir/"
fi
if ! command -v chromium >/dev/null; then
  echo "[dashboard] installing chromium" >&2
  update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
echo "[dashboard] prometheus $("$dir/prometheus" --version 2>&1 | head -1 | awk '{print $3}'), $(chromium --version)" >&2
