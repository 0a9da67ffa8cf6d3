# Sourced by the image scripts: a private containers storage and settings for buildah and podman, in
# the tools cache, so builds neither touch nor depend on the machine's /var/lib/containers and the
# images survive between runs (cached by content).
RLHF_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/rlhf-operator
RLHF_CONTAINERS=${RLHF_CONTAINERS:-$RLHF_CACHE/containers}
RLHF_IMAGES_CACHE=$RLHF_CACHE/images
mkdir -p "$RLHF_CONTAINERS/storage" "$RLHF_CONTAINERS/run" "$RLHF_IMAGES_CACHE"
cat >"$RLHF_CONTAINERS/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$RLHF_CONTAINERS/storage"
runroot = "$RLHF_CONTAINERS/run"
CONF
# runc, not crun (crun refuses the hybrid cgroup v1 layout of some VMs); no network for containers
# (a test container that needs the API server joins the host's loopback explicitly); ulimits within
# what an unprivileged-resource VM allows.
cat >"$RLHF_CONTAINERS/containers.conf" <<CONF
[containers]
netns = "none"
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_STORAGE_CONF=$RLHF_CONTAINERS/storage.conf CONTAINERS_CONF=$RLHF_CONTAINERS/containers.conf
