#!/usr/bin/env bash
# The floor under `bottle start`: the same engine client makes what a bottle is made of
# (three networks, then the scanner, proxy and agent containers from the same images) with
# everything independent in parallel and nothing checked, runs the agent command with
# `exec`, then removes it all. benchmarks/start_time.py times this next to `bottle start`.
#
#   benchmarks/start_floor.sh PIPELOCK_IMAGE PROXY_IMAGE AGENT_IMAGE -- COMMAND...
#
# The command's stdout is passed through; everything is removed on exit.
# Env: BOTTLE_DOCKER (client, default docker on PATH).
set -euo pipefail
[[ $# -ge 5 && "$4" == "--" ]] || { echo "usage: $0 PIPELOCK_IMAGE PROXY_IMAGE AGENT_IMAGE -- COMMAND..." >&2; exit 2; }
scanner_image="$1" proxy_image="$2" agent_image="$3"
shift 4
docker="${BOTTLE_DOCKER:-docker}"
id="bottle-floor-$$-$RANDOM"
label=(--label dev.bottle.benchmark=floor)

teardown() {
    "$docker" rm --force "$id-agent" "$id-proxy" "$id-scanner" >/dev/null 2>&1 || true
    "$docker" network rm "$id-agent" "$id-scanner" "$id-egress" >/dev/null 2>&1 || true
}
trap teardown EXIT

"$docker" network create --internal "${label[@]}" "$id-agent" >/dev/null &
"$docker" network create --internal "${label[@]}" "$id-scanner" >/dev/null &
"$docker" network create "${label[@]}" "$id-egress" >/dev/null &
wait

# The scanner and the proxy run their images' own entrypoints (the proxy's waits for
# its policy); the agent sleeps, as a bottle's agent does until its command is exec'd.
"$docker" run --detach --name "$id-scanner" --network "$id-scanner" "${label[@]}" "$scanner_image" >/dev/null &
"$docker" run --detach --name "$id-proxy" --network "$id-egress" "${label[@]}" "$proxy_image" >/dev/null &
"$docker" run --detach --name "$id-agent" --network "$id-agent" "${label[@]}" \
    --entrypoint sleep "$agent_image" infinity >/dev/null &
wait

"$docker" exec "$id-agent" "$@"
