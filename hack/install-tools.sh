#!/usr/bin/env bash
# Builds the local control plane and helper tools from the Go module proxy, once per version.
#
# Binaries land in $RLHF_TOOLS_DIR/bin (default ~/.cache/rlhf-operator/tools/bin), never in the repo.
# Each tool is rebuilt only when its binary is missing or reports another version, so a warm run
# takes seconds. A failed build names the tool and keeps its log.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.36.3}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
KWOK_VERSION=${KWOK_VERSION:-0.8.0}
HELM_VERSION=${HELM_VERSION:-3.22.0}
COREDNS_VERSION=${COREDNS_VERSION:-1.15.0}
KUEUE_VERSION=${KUEUE_VERSION:-0.17.0}
EKSCTL_VERSION=${EKSCTL_VERSION:-0.215.0}

TOOLS=${RLHF_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rlhf-operator/tools}
BIN=$TOOLS/bin
LOGS=$TOOLS/logs
mkdir -p "$BIN" "$LOGS"

export GOPROXY=${GOPROXY:-https://proxy.golang.org}
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -trimpath"
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

log() { printf '[tools] %s\n' "$*" >&2; }

# run_build TOOL CMD...: runs a build step with its output in a log, and on failure says which tool broke.
run_build() {
  local tool=$1; shift
  local logfile=$LOGS/$tool.log
  if ! "$@" >>"$logfile" 2>&1; then
    log "FAILED to build $tool (command: $*)"
    log "last lines of $logfile:"
    tail -n 25 "$logfile" >&2
    exit 1
  fi
}

# has_version BINARY PATTERN ARGS...: true when BINARY exists and its version output contains PATTERN.
has_version() {
  local binary=$1 pattern=$2; shift 2
  local out
  [ -x "$BIN/$binary" ] && out=$("$BIN/$binary" "$@" 2>/dev/null) && [[ $out == *"$pattern"* ]]
}

need_go() {
  command -v go >/dev/null || { log "Go is required to build the tools (https://go.dev/doc/install)"; exit 1; }
}

install_etcd() {
  if has_version etcd "etcd Version: $ETCD_VERSION" --version && has_version etcdctl "$ETCD_VERSION" version; then
    log "etcd $ETCD_VERSION: cached"; return
  fi
  need_go; log "etcd $ETCD_VERSION: building"
  local dir=$TOOLS/build/etcd; rm -rf "$dir"; mkdir -p "$dir"; : >"$LOGS/etcd.log"
  cat >"$dir/go.mod" <<MOD
module local.build/etcd

go 1.25.0

require (
	go.etcd.io/etcd/server/v3 v$ETCD_VERSION
	go.etcd.io/etcd/etcdctl/v3 v$ETCD_VERSION
)

tool (
	go.etcd.io/etcd/server/v3
	go.etcd.io/etcd/etcdctl/v3
)
MOD
  (cd "$dir" && run_build etcd go mod tidy)
  local ldf="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$ETCD_VERSION"
  (cd "$dir" && run_build etcd go build -ldflags "$ldf" -o "$BIN/etcd" go.etcd.io/etcd/server/v3 \
    && run_build etcd go build -ldflags "$ldf" -o "$BIN/etcdctl" go.etcd.io/etcd/etcdctl/v3)
}

install_kubernetes() {
  if has_version kube-apiserver "v$K8S_VERSION" --version && has_version kubectl "v$K8S_VERSION" version --client \
    && has_version kube-controller-manager "v$K8S_VERSION" --version && has_version kube-scheduler "v$K8S_VERSION" --version; then
    log "kubernetes $K8S_VERSION: cached"; return
  fi
  need_go; log "kubernetes $K8S_VERSION: building (cold builds take 10-30 minutes on 2 cores)"
  build_kubernetes kubernetes kube-apiserver kube-controller-manager kube-scheduler kubectl
}

# The real node's binaries (kubelet, kube-proxy): same module, version and flags as the control plane.
install_node() {
  if has_version kubelet "v$K8S_VERSION" --version && has_version kube-proxy "v$K8S_VERSION" --version; then
    log "kubelet, kube-proxy $K8S_VERSION: cached"; return
  fi
  need_go; log "kubelet, kube-proxy $K8S_VERSION: building (~1 minute with a warm Go cache, ~5 cold)"
  build_kubernetes node kubelet kube-proxy
}

# build_kubernetes LOG CMD...: builds k8s.io/kubernetes/cmd/CMD... at K8S_VERSION into $BIN.
build_kubernetes() {
  local name=$1; shift
  local dir=$TOOLS/build/$name minor=${K8S_VERSION#1.} cmds="" tools="" c
  for c in "$@"; do cmds="$cmds k8s.io/kubernetes/cmd/$c" tools="$tools k8s.io/kubernetes/cmd/$c@v$K8S_VERSION"; done
  rm -rf "$dir"; mkdir -p "$dir"; : >"$LOGS/$name.log"
  cd "$dir"
  run_build "$name" go mod init "local.build/$name"
  # k8s.io/kubernetes requires its staging modules at v0.0.0; each is replaced by its published twin.
  local upstream
  upstream=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  grep -E '^\s*k8s\.io/[A-Za-z0-9._-]+ => \./staging/' "$upstream" | awk '{print $1}' | sort -u >staging.txt
  [ -s staging.txt ] || { log "FAILED to build $name: no staging modules found in $upstream"; exit 1; }
  while read -r module; do go mod edit -replace "$module=$module@v0.$minor"; done <staging.txt
  local godebug; godebug=$(awk '/^godebug/{print $2; exit}' "$upstream")
  [ -z "$godebug" ] || go mod edit -godebug "$godebug"
  # shellcheck disable=SC2086
  run_build "$name" go get -tool $tools
  run_build "$name" go mod tidy
  local ldf="-s -w" date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldf="$ldf -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
    ldf="$ldf -X $p.gitTreeState=clean -X $p.gitCommit=gomod-v$K8S_VERSION -X $p.buildDate=$date"
  done
  # shellcheck disable=SC2086
  run_build "$name" go build -tags selinux,notest,grpcnotrace -ldflags "$ldf" -o "$BIN/" $cmds
  cd - >/dev/null
}

# Cluster DNS for the real node (github.com/coredns/coredns has no replace directives: plain go install).
install_coredns() {
  if has_version coredns "CoreDNS-$COREDNS_VERSION" -version; then
    log "coredns $COREDNS_VERSION: cached"; return
  fi
  need_go; log "coredns $COREDNS_VERSION: building"; : >"$LOGS/coredns.log"
  GOBIN=$BIN run_build coredns go install -ldflags "-s -w" "github.com/coredns/coredns@v$COREDNS_VERSION"
}

install_kwok() {
  if has_version kwokctl "$KWOK_VERSION" --version && has_version kwok "$KWOK_VERSION" --version; then
    log "kwok $KWOK_VERSION: cached"; return
  fi
  need_go; log "kwok $KWOK_VERSION: building"; : >"$LOGS/kwok.log"
  GOBIN=$BIN run_build kwok go install -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@v$KWOK_VERSION"
  # kwok's own stage definitions (node lifecycle) come from the same module.
  local src; src=$(go list -m -f '{{.Dir}}' "sigs.k8s.io/kwok@v$KWOK_VERSION" 2>/dev/null || true)
  [ -n "$src" ] || src=$(go env GOMODCACHE)/sigs.k8s.io/kwok@v$KWOK_VERSION
  rm -rf "$TOOLS/kwok-stages"; mkdir -p "$TOOLS/kwok-stages"
  cp -r "$src/kustomize/stage/." "$TOOLS/kwok-stages/"; chmod -R u+w "$TOOLS/kwok-stages"
}

install_helm() {
  # A helm built without the Kubernetes version of its client-go (as helm's Makefile sets it) assumes
  # v1.20 for `helm template` and refuses any chart whose kubeVersion needs more: rebuild such a one.
  if has_version helm "v$HELM_VERSION" version --short && grep -qs chartutil.k8sVersionMinor "$TOOLS/helm.ldflags"; then
    log "helm $HELM_VERSION: cached"; return
  fi
  need_go; log "helm $HELM_VERSION: building"; : >"$LOGS/helm.log"
  local v; v=$(echo "$HELM_VERSION" | cut -d. -f1)
  local ldf="-s -w -X helm.sh/helm/v$v/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v$v/internal/version.gitTreeState=clean"
  local client; client=$(go mod download -json "helm.sh/helm/v$v@v$HELM_VERSION" \
    | python3 -c 'import json,re,sys; print(re.search(r"k8s.io/client-go v0\.(\d+)", open(json.load(sys.stdin)["GoMod"]).read())[1])')
  local p
  for p in pkg/lint/rules pkg/chartutil; do
    ldf="$ldf -X helm.sh/helm/v$v/$p.k8sVersionMajor=1 -X helm.sh/helm/v$v/$p.k8sVersionMinor=$client"
  done
  GOBIN=$BIN run_build helm go install -ldflags "$ldf" "helm.sh/helm/v$v/cmd/helm@v$HELM_VERSION"
  echo "$ldf" >"$TOOLS/helm.ldflags"  # -trimpath keeps the flags out of the binary's build info
}

# Kueue (the job queue GPU clusters use) for the local cluster's admission tests: the controller
# binary, and from the same module its CRDs and webhook configurations (hack/kueue.py reads them).
install_kueue() {
  local dir=$TOOLS/kueue
  if [ -x "$BIN/kueue" ] && [ "$(cat "$dir/VERSION" 2>/dev/null)" = "$KUEUE_VERSION" ]; then
    log "kueue $KUEUE_VERSION: cached"; return
  fi
  need_go; log "kueue $KUEUE_VERSION: building (~4 minutes cold on 2 cores)"; : >"$LOGS/kueue.log"
  local ldf="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=v$KUEUE_VERSION"
  GOBIN=$BIN run_build kueue go install -ldflags "$ldf" "sigs.k8s.io/kueue/cmd/kueue@v$KUEUE_VERSION"
  local src; src=$(go env GOMODCACHE)/sigs.k8s.io/kueue@v$KUEUE_VERSION
  rm -rf "$dir"; mkdir -p "$dir/crds"
  cp "$src"/config/components/crd/bases/*.yaml "$dir/crds/"
  cp "$src/config/components/webhook/manifests.yaml" "$dir/webhooks.yaml"
  chmod -R u+w "$dir"; echo "$KUEUE_VERSION" >"$dir/VERSION"
}

# eksctl's JSON schema of its ClusterConfig, from its Go module (nothing is built): the test of
# docs/eks.md validates the guide's eksctl config against it.
install_eksctl_schema() {
  local dir=$TOOLS/eksctl
  if [ -s "$dir/schema.json" ] && [ "$(cat "$dir/VERSION" 2>/dev/null)" = "$EKSCTL_VERSION" ]; then
    log "eksctl schema $EKSCTL_VERSION: cached"; return
  fi
  need_go; log "eksctl schema $EKSCTL_VERSION: downloading its module"; : >"$LOGS/eksctl.log"
  local src
  src=$(go mod download -json "github.com/weaveworks/eksctl@v$EKSCTL_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$dir"; mkdir -p "$dir"
  cp "$src/pkg/apis/eksctl.io/v1alpha5/assets/schema.json" "$dir/schema.json"
  chmod u+w "$dir/schema.json"; echo "$EKSCTL_VERSION" >"$dir/VERSION"
}

# `node` and `coredns` are for the real node (make node-tools); the default set is the simulated cluster's
# (Kueue included: the admission tests run it; eksctl's schema: the EKS guide's test reads it).
want=${*:-etcd kwok helm kubernetes kueue eksctl_schema}
for tool in $want; do
  start=$SECONDS
  "install_$tool"
  log "$tool ready in $((SECONDS - start))s"
done
# Writes the versions the cluster launcher reads, so one place pins them.
printf 'k8s=%s\netcd=%s\nkwok=%s\nhelm=%s\ncoredns=%s\nkueue=%s\n' "$K8S_VERSION" "$ETCD_VERSION" "$KWOK_VERSION" "$HELM_VERSION" "$COREDNS_VERSION" "$KUEUE_VERSION" >"$TOOLS/versions"
log "tools in $BIN"
