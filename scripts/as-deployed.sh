#!/usr/bin/env bash
# The as-deployed check (docs/operations.md, "The as-deployed check"): build the image from the
# repository's Dockerfile as it is, run the production process tree from it (migrate, two
# `serve`, two `consume`) configured as deploy/k8s configures it, behind the shipped nginx, and
# drive the contract's flows against it (tests/as_deployed/).
#
# Needs root on Debian (buildah, podman, runc, mmdebstrap and nginx come from apt). Under
# CI=true anything it cannot do fails it; elsewhere a missing tool is a skip that says why.
# Extra arguments go to pytest (`bash scripts/as-deployed.sh -k rolling -x`).
source "$(dirname "$0")/bootstrap.sh"
started_at=$(date +%s)

in_ci() { case "${CI:-}" in 1 | true | TRUE | True | yes) return 0 ;; *) return 1 ;; esac; }
say() { echo "as-deployed: $*" >&2; }
cannot() {
    if in_ci; then
        say "FAILED: $*"
        exit 1
    fi
    say "skipped: $*"
    exit 0
}

# --- Tools ----------------------------------------------------------------------------------
tools=(buildah podman runc mmdebstrap nginx newuidmap)
missing() {
    local tool out=()
    for tool in "${tools[@]}"; do
        command -v "$tool" > /dev/null || [ -x "/usr/sbin/$tool" ] || out+=("$tool")
    done
    echo "${out[*]}"
}
if [ -n "$(missing)" ]; then
    [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null \
        || cannot "missing $(missing); installing them needs root and apt-get (Debian)"
    say "installing buildah podman runc mmdebstrap uidmap nginx (apt-get)"
    packages=(buildah podman runc mmdebstrap uidmap nginx)
    { apt-get install -y -q "${packages[@]}" || { apt-get update -q && apt-get install -y -q "${packages[@]}"; }; } \
        > /dev/null 2>&1 || cannot "apt-get could not install ${packages[*]}"
    [ -z "$(missing)" ] || cannot "still missing after apt-get: $(missing)"
fi
[ "$(id -u)" -eq 0 ] || cannot "buildah and podman run here as root (vfs storage, host network)"

# --- Storage shared by buildah and podman -----------------------------------------------------
state="$PWD/.data/as-deployed"
mkdir -p "$state"
# Short, per-checkout run root (podman's sockets live there; paths must stay short).
runroot="/tmp/agw-as-deployed-$(printf '%s' "$PWD" | sha256sum | cut -c1-12)"
storage=(--root "$state/storage" --runroot "$runroot" --storage-driver vfs)
podman_global=("${storage[@]}" --cgroup-manager cgroupfs --events-backend file --runtime runc)

# --- The base image: a stand-in for python:3.11-slim made from Debian's packages -------------
# pip inside the build must trust what the host's pip trusts (the host's CA bundle) and use
# the host's index settings; both are baked into the base, since the Dockerfile stays as is.
host_ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$host_ca" ] || cannot "no CA bundle at $host_ca for pip inside the build"
pip_index=$(.venv/bin/python -m pip config get global.index-url 2>/dev/null || true)
pip_index=${PIP_INDEX_URL:-$pip_index}
base_packages="python3,python3-venv,python-is-python3,passwd"
base_key=$( { echo "v1 $base_packages $pip_index"; cat "$host_ca"; } | sha256sum | cut -c1-16)
base_image="localhost/agent-gateway-as-deployed-base:$base_key"
base_tar="$state/base-$base_key.tar"
if ! podman "${podman_global[@]}" image exists "$base_image"; then
    if [ ! -f "$base_tar" ]; then
        say "making the base image (mmdebstrap: $base_packages)"
        pip_conf="[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
        [ -n "$pip_index" ] && pip_conf+="index-url = $pip_index\n"
        partial="$state/base-$base_key.partial.tar"
        rm -f "$partial"
        mmdebstrap --quiet --variant=essential --include="$base_packages" \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --customize-hook="mkdir -p \"\$1/etc/ssl/certs\" && cp $host_ca \"\$1/etc/ssl/certs/ca-certificates.crt\"" \
            --customize-hook="printf '$pip_conf' > \"\$1/etc/pip.conf\"" \
            bookworm "$partial" > "$state/mmdebstrap.log" 2>&1 \
            || { tail -n 30 "$state/mmdebstrap.log" >&2; cannot "mmdebstrap failed (log: $state/mmdebstrap.log)"; }
        mv "$partial" "$base_tar"
    fi
    podman "${podman_global[@]}" import "$base_tar" "$base_image" > /dev/null \
        || cannot "podman import of the base image failed"
fi
say "base image $base_image ($(($(date +%s) - started_at)) s)"

# --- The image, from the Dockerfile as it is ----------------------------------------------------
image="localhost/agent-gateway:as-deployed"
git diff --quiet HEAD -- Dockerfile 2>/dev/null || say "note: Dockerfile has uncommitted changes"
build_started=$(date +%s)
if ! buildah "${storage[@]}" bud --isolation chroot --format docker \
        --build-arg "PYTHON_IMAGE=$base_image" -f Dockerfile -t "$image" . \
        > "$state/build.log" 2>&1; then
    tail -n 40 "$state/build.log" >&2
    cannot "the image did not build from the Dockerfile (log: $state/build.log)"
fi
say "image $image built in $(($(date +%s) - build_started)) s (log: $state/build.log)"

# --- The tree and the flows (tests/as_deployed/) -----------------------------------------------
workdir="$state/run-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$workdir"
# Bounded: the stage must end well within its budget even when something hangs. SIGTERM lets
# the harness remove its containers and stop its servers.
remaining=$((570 - ($(date +%s) - started_at)))
[ "$remaining" -gt 60 ] || cannot "no time left for the flows after the build"
status=0
AS_DEPLOYED=1 AS_DEPLOYED_IMAGE="$image" AS_DEPLOYED_WORKDIR="$workdir" \
    AS_DEPLOYED_PODMAN="podman ${podman_global[*]}" \
    timeout --kill-after=30 "$remaining" \
    .venv/bin/python -m pytest tests/as_deployed -p no:cacheprovider -s "$@" || status=$?
if [ "$status" -eq 124 ]; then
    say "FAILED: the flows did not finish within the stage's budget"
elif [ "$status" -eq 5 ]; then
    say "FAILED: pytest collected no as-deployed tests"
fi
say "logs of the tree: $workdir"
say "stage took $(($(date +%s) - started_at)) s"
exit "$status"
