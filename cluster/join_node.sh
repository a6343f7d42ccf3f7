#!/usr/bin/env bash
# Join this machine to a running Ray head as another node (a worker node with its own resources),
# with the head's token. Idempotent: if this node is already running it says so and exits 0.
#
# Environment:
#   RAY_HEAD_ADDRESS       the head's GCS address host:port (required; start_head.sh prints it)
#   RAY_AUTH_TOKEN_PATH    the head's token file (default ~/.ray/auth_token); or RAY_AUTH_TOKEN
#   RAY_NUM_CPUS           CPUs this node offers (default: nproc)
#   RAY_NUM_GPUS           GPUs this node offers (default: Ray detects them)
#   RAY_NODE_HOST          the address this node's servers bind (default: the address from which
#                          the head is reached; 127.0.0.1 for a head on this machine's loopback)
#   RAY_DASHBOARD_AGENT_PORT  this node's dashboard agent port (default 52366: not the head's)
#   RAY_TEMP_DIR           Ray's --temp-dir (default Ray's /tmp/ray); keep the path short
#   RAY_NODE_STATE_DIR     pid + log file (default ~/.local/state/cascade_dist/ray-node-AGENT_PORT)
#   RAY_START_EXTRA_ARGS   extra arguments for `ray start` (word-split)
set -euo pipefail
# shellcheck source=cluster/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

HEAD="${RAY_HEAD_ADDRESS:-}"
[[ -n "$HEAD" ]] || die "set RAY_HEAD_ADDRESS=host:port (the head's GCS address, printed by start_head.sh)"
HEAD_HOST="${HEAD%:*}"
AGENT_PORT="${RAY_DASHBOARD_AGENT_PORT:-52366}"
NUM_CPUS="${RAY_NUM_CPUS:-$(nproc)}"
STATE_DIR="${RAY_NODE_STATE_DIR:-$STATE_ROOT/ray-node-$AGENT_PORT}"
PIDFILE="$STATE_DIR/ray-node.pid"
LOGFILE="$STATE_DIR/ray-node.log"
READY_TIMEOUT="${RAY_NODE_READY_TIMEOUT:-120}"
PATTERN="ray start --address"

command -v ray >/dev/null || die "'ray' not found on PATH (run 'make install' or activate the venv)"
export RAY_AUTH_MODE=token
if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
    TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    [[ -s "$TOKEN_PATH" ]] || die "no token at $TOKEN_PATH: copy the head's token there (or set RAY_AUTH_TOKEN_PATH)"
    [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]] && export RAY_AUTH_TOKEN_PATH
fi

if pid_alive "$PIDFILE" "$PATTERN"; then
    log "already running (pid $(cat "$PIDFILE")), joined to $HEAD"
    exit 0
fi
port_open "$HEAD_HOST" "${HEAD##*:}" || die "no Ray head answers at $HEAD (start it with cluster/start_head.sh)"
port_open "${RAY_NODE_HOST:-127.0.0.1}" "$AGENT_PORT" && die "port $AGENT_PORT is in use; choose another RAY_DASHBOARD_AGENT_PORT"

mkdir -p "$STATE_DIR"
args=(start --address "$HEAD" --block --num-cpus "$NUM_CPUS" --dashboard-agent-listen-port "$AGENT_PORT"
    --disable-usage-stats)
[[ -n "${RAY_NUM_GPUS:-}" ]] && args+=(--num-gpus "$RAY_NUM_GPUS")
[[ -n "${RAY_TEMP_DIR:-}" ]] && args+=(--temp-dir "$RAY_TEMP_DIR")
# Ray refuses to join a node while its single-machine mode is on (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
# start_head.sh's loopback mode). A joining node needs the multi-node mode; without --node-ip-address
# Ray takes the address from which it reaches the head (127.0.0.1 for a loopback head), and
# `--node-ip-address 127.0.0.1` would be rewritten to the interface address.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1
if [[ -n "${RAY_NODE_HOST:-}" ]] && ! is_loopback "$RAY_NODE_HOST"; then
    args+=(--node-ip-address "$RAY_NODE_HOST")
elif ! is_loopback "$HEAD_HOST"; then
    log "note: this node binds the address from which it reaches $HEAD_HOST (set RAY_NODE_HOST to choose)"
fi
# shellcheck disable=SC2206
[[ -n "${RAY_START_EXTRA_ARGS:-}" ]] && args+=($RAY_START_EXTRA_ARGS)

joined() { grep -q "Ray runtime started" "$LOGFILE" 2>/dev/null; }
start_service "Ray node joining $HEAD ($NUM_CPUS CPUs)" "$PIDFILE" "$LOGFILE" "$PATTERN" "$READY_TIMEOUT" leader joined \
    -- ray "${args[@]}"
log "stop: cluster/stop_node.sh (same RAY_DASHBOARD_AGENT_PORT / RAY_NODE_STATE_DIR)"
