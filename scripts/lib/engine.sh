#!/usr/bin/env bash
# Engine setup. Source it after common.sh.
#   ensure_engine   make sure a Docker engine answers (installing docker.io and
#                   starting dockerd when root and needed), then pick a docker
#                   client that can build with BuildKit and export it as
#                   BOTTLE_DOCKER (plus DOCKER_BUILDKIT=1).
#   ensure_podman   install Debian's rootful Podman beside Docker (root only) and
#                   export BOTTLE_PODMAN; see docs/prds/0007-podman.md.
#   dk ARGS...      run the chosen docker client.

if [[ -n "${_BOTTLE_ENGINE_SH:-}" ]]; then return 0; fi
_BOTTLE_ENGINE_SH=1

dk() { "${BOTTLE_DOCKER:-docker}" "$@"; }

# Wait up to $1 seconds for the engine to answer `docker info`.
_wait_engine() {
    local client="$1" limit="$2" i
    for ((i = 0; i < limit; i++)); do
        if [[ -S /var/run/docker.sock ]] && "$client" info >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    return 1
}

_start_dockerd() {
    [[ $EUID -eq 0 ]] || die "no Docker engine answers and not root: start Docker yourself"
    if ! command -v dockerd >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || die "no Docker engine and no apt-get to install one"
        # debootstrap too: ensure_base_images needs it when nothing can be pulled.
        note "installing docker.io debootstrap with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed"
        apt-get install -y -qq docker.io debootstrap >/dev/null || die "apt-get install docker.io debootstrap failed"
    fi
    if command -v pgrep >/dev/null 2>&1 && pgrep -x dockerd >/dev/null 2>&1; then
        note "dockerd already running; waiting for it"
    else
        note "starting dockerd (log: /var/log/dockerd.log)"
        nohup dockerd </dev/null >/var/log/dockerd.log 2>&1 &
        disown || true
    fi
    _wait_engine "$(command -v docker || echo /usr/bin/docker)" 60 \
        || die "dockerd did not come up within 60s; see /var/log/dockerd.log"
}

# Major version of a docker client binary (0 if unknown).
_client_major() {
    local v
    v="$("$1" version --format '{{.Client.Version}}' 2>/dev/null || true)"
    v="${v%%.*}"
    [[ "$v" =~ ^[0-9]+$ ]] && echo "$v" || echo 0
}

# Print the path of a docker client able to do `docker build` with BuildKit
# (needed for RUN --mount=type=secret).
_pick_client() {
    local c
    for c in "${BOTTLE_DOCKER:-}" "$(command -v docker 2>/dev/null || true)" /usr/bin/docker; do
        [[ -n "$c" && -x "$(command -v "$c" 2>/dev/null || true)" ]] || continue
        c="$(command -v "$c")"
        "$c" info >/dev/null 2>&1 || continue
        if "$c" buildx version >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
        if (($(_client_major "$c") < 23)); then
            echo "$c"
            return 0
        fi
        note "$c ($("$c" version --format '{{.Client.Version}}' 2>/dev/null)) has no buildx and is >= 23; trying another client"
    done
    return 1
}

ensure_engine() {
    if ! docker info >/dev/null 2>&1 && ! /usr/bin/docker info >/dev/null 2>&1; then
        _start_dockerd
    fi
    BOTTLE_DOCKER="$(_pick_client)" \
        || die "no docker client with BuildKit support (install docker-buildx or docker.io's /usr/bin/docker)"
    export BOTTLE_DOCKER
    export DOCKER_BUILDKIT=1
    note "engine $(dk version --format '{{.Server.Version}}' 2>/dev/null), client $BOTTLE_DOCKER ($(dk version --format '{{.Client.Version}}' 2>/dev/null))"
    note "BOTTLE_DOCKER=$BOTTLE_DOCKER"
}

# Rootful Podman raises every container's open-files and process limits to 1048576,
# which needs CAP_SYS_RESOURCE; in a sandbox without it no container starts ("error
# setting rlimit"). Give Podman the limits this root can give: its hard limits, and
# for processes no more than kernel.pid_max (more could never run; in such a sandbox
# Podman's own process limit was found capped there).
_podman_ulimits() {
    local conf=/etc/containers/containers.conf.d/bottle-ulimits.conf limits=() want nproc pid_max
    (ulimit -Hn 1048576) 2>/dev/null || limits+=("\"nofile=$(ulimit -Hn):$(ulimit -Hn)\"")
    if ! (ulimit -Hu 1048576) 2>/dev/null; then
        nproc="$(ulimit -Hu)" pid_max="$(cat /proc/sys/kernel/pid_max)"
        ((nproc > pid_max)) && nproc="$pid_max"
        limits+=("\"nproc=$nproc:$nproc\"")
    fi
    ((${#limits[@]})) || return 0
    want="$(printf '[containers]\ndefault_ulimits = [%s]' "$(IFS=,; echo "${limits[*]}")")"
    if [[ "$(cat "$conf" 2>/dev/null)" != "$want" ]]; then
        mkdir -p "$(dirname "$conf")"
        printf '%s\n' "$want" >"$conf"
        note "root cannot raise resource limits here: wrote $conf"
    fi
}

# Docker sets the iptables FORWARD policy to DROP, and with br_netfilter that also
# drops traffic between containers on Podman's internal bridges (netavark adds no
# rules for internal networks). Allow same-bridge traffic on podman* bridges in
# DOCKER-USER, the chain Docker keeps for rules of one's own; Docker's own networks
# are untouched.
_podman_forward() {
    local rule=(-i podman+ -o podman+ -m physdev --physdev-is-bridged
        -m comment --comment "bottle: traffic within a Podman network" -j ACCEPT)
    command -v iptables >/dev/null 2>&1 || return 0
    iptables -S FORWARD 2>/dev/null | grep -qx -- '-P FORWARD DROP' || return 0
    iptables -S DOCKER-USER >/dev/null 2>&1 || return 0
    iptables -C DOCKER-USER "${rule[@]}" 2>/dev/null && return 0
    iptables -I DOCKER-USER "${rule[@]}" || die "could not add the DOCKER-USER rule for Podman's bridges"
    note "added to DOCKER-USER: ${rule[*]}"
}

ensure_podman() {
    if ! command -v podman >/dev/null 2>&1; then
        if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
            warn "no podman, and not root with apt-get to install it: the Podman tests will fail under CI=true"
            return 0
        fi
        # catatonit is Podman's --init; rootful Podman needs none of the rootless extras.
        note "installing podman netavark aardvark-dns catatonit with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends podman netavark aardvark-dns catatonit >/dev/null \
            || die "apt-get install podman failed"
    fi
    BOTTLE_PODMAN="$(command -v podman)"
    export BOTTLE_PODMAN
    if [[ $EUID -eq 0 ]]; then
        _podman_ulimits
        _podman_forward
    fi
    note "podman $("$BOTTLE_PODMAN" version --format '{{.Client.Version}}' 2>/dev/null)" \
        "($("$BOTTLE_PODMAN" info --format '{{.Host.NetworkBackend}}, rootless={{.Host.Security.Rootless}}' 2>/dev/null))"
    note "BOTTLE_PODMAN=$BOTTLE_PODMAN"
}
