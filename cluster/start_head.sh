#!/usr/bin/env bash
# Start a local Ray head (GCS + dashboard + job server) with token authentication, bound to
# 127.0.0.1. Idempotent: if this head is already running it says so and exits 0.
#
# Environment (all optional):
#   RAY_HEAD_HOST          address every Ray server binds (default 127.0.0.1; anything else
#                          exposes the cluster to that network: only with token auth, on a
#                          trusted network)
#   RAY_DASHBOARD_PORT     dashboard + job server port (default 8265)
#   RAY_GCS_PORT           GCS port (default 6379)
#   RAY_CLIENT_SERVER_PORT Ray Client port (default 10001)
#   RAY_DASHBOARD_AGENT_PORT  HTTP port of the head's dashboard agent, which runs submitted
#                          jobs (default 52365, Ray's)
#   RAY_NUM_CPUS           CPUs the head offers (default: nproc)
#   RAY_NUM_GPUS           GPUs the head offers (default: Ray detects them)
#   RAY_TEMP_DIR           Ray's --temp-dir (default Ray's /tmp/ray); keep the path short
#                          (Unix socket paths under it are limited to 107 characters)
#   RAY_HEAD_STATE_DIR     pid + log file (default ~/.local/state/cascade_dist/ray-head-PORT)
#   RAY_AUTH_TOKEN_PATH    token file (default ~/.ray/auth_token, Ray's standard location);
#                          created with mode 0600 when missing. RAY_AUTH_TOKEN (the token
#                          itself) takes precedence when set, as in Ray.
#   RAY_START_EXTRA_ARGS   extra arguments for `ray start` (word-split)
set -euo pipefail
# shellcheck source=cluster/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

HOST="${RAY_HEAD_HOST:-127.0.0.1}"
[[ "$HOST" == localhost ]] && HOST=127.0.0.1
DASH_PORT="${RAY_DASHBOARD_PORT:-8265}"
GCS_PORT="${RAY_GCS_PORT:-6379}"
CLIENT_PORT="${RAY_CLIENT_SERVER_PORT:-10001}"
AGENT_PORT="${RAY_DASHBOARD_AGENT_PORT:-52365}"
NUM_CPUS="${RAY_NUM_CPUS:-$(nproc)}"
STATE_DIR="${RAY_HEAD_STATE_DIR:-$STATE_ROOT/ray-head-$DASH_PORT}"
PIDFILE="$STATE_DIR/ray-head.pid"
LOGFILE="$STATE_DIR/ray-head.log"
READY_TIMEOUT="${RAY_HEAD_READY_TIMEOUT:-120}"
ADDRESS="http://$HOST:$DASH_PORT"
PATTERN="ray start --head"

command -v ray >/dev/null || die "'ray' not found on PATH (run 'make install' or activate the venv)"

# --- token authentication (always on) --------------------------------------------------------
export RAY_AUTH_MODE=token
TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
    if [[ ! -s "$TOKEN_PATH" ]]; then
        mkdir -p "$(dirname "$TOKEN_PATH")"
        chmod 700 "$(dirname "$TOKEN_PATH")" 2>/dev/null || true
        # Same format as `ray get-auth-token --generate` (which would print the token).
        (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32), end="")' >"$TOKEN_PATH")
        log "created a new Ray auth token in $TOKEN_PATH (mode 0600)"
    fi
    chmod 600 "$TOKEN_PATH" 2>/dev/null || true
    [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]] && export RAY_AUTH_TOKEN_PATH
fi

# Authorization header for curl, read from a process substitution so that the token never
# appears in a command line (ps) or a log.
auth_header() {
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        printf 'Authorization: Bearer %s\n' "$RAY_AUTH_TOKEN"
    else
        printf 'Authorization: Bearer %s\n' "$(<"$TOKEN_PATH")"
    fi
}
http_ok() {
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H @<(auth_header) "$1")" == 200 ]]
}
# Ready = the job server answers (with the token) and the head's dashboard agent, which
# actually starts submitted jobs, is up: a job submitted before the agent registers fails with
# "No available agent to submit job".
job_server_ready() {
    http_ok "$ADDRESS/api/jobs/" && http_ok "http://$HOST:$AGENT_PORT/api/local_raylet_healthz"
}

print_usage() {
    local TOKEN_SOURCE="$TOKEN_PATH"
    [[ -n "${RAY_AUTH_TOKEN:-}" ]] && TOKEN_SOURCE="the RAY_AUTH_TOKEN environment variable"
    local env_line="export RAY_ADDRESS=$ADDRESS RAY_AUTH_MODE=token"
    [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]] && env_line+=" RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    cat <<EOF
Ray head: $ADDRESS (dashboard + job server), GCS $HOST:$GCS_PORT, log $LOGFILE
Token: $TOKEN_SOURCE (clients need RAY_AUTH_MODE=token and this token)
Submit a job:
  $env_line
  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m cascade_dist.train
Stop: cluster/stop_head.sh   (same RAY_DASHBOARD_PORT / RAY_HEAD_STATE_DIR)
EOF
}

# --- already running? ------------------------------------------------------------------------
if pid_alive "$PIDFILE" "$PATTERN"; then
    log "already running (pid $(cat "$PIDFILE"))"
    for _ in $(seq 60); do job_server_ready && break; sleep 0.5; done
    job_server_ready || die "head process is alive but the job server at $ADDRESS does not answer; see $LOGFILE"
    print_usage
    exit 0
fi
for p in "$DASH_PORT" "$GCS_PORT" "$CLIENT_PORT" "$AGENT_PORT"; do
    port_open "$HOST" "$p" && die "port $p on $HOST is in use by another process (not a head started by this script from $STATE_DIR); choose other ports via RAY_DASHBOARD_PORT / RAY_GCS_PORT / RAY_CLIENT_SERVER_PORT / RAY_DASHBOARD_AGENT_PORT"
done

# --- start -----------------------------------------------------------------------------------
mkdir -p "$STATE_DIR"
args=(start --head --block
    --port "$GCS_PORT" --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT"
    --dashboard-host "$HOST" --dashboard-port "$DASH_PORT"
    --num-cpus "$NUM_CPUS" --disable-usage-stats)
[[ -n "${RAY_NUM_GPUS:-}" ]] && args+=(--num-gpus "$RAY_NUM_GPUS")
[[ -n "${RAY_TEMP_DIR:-}" ]] && args+=(--temp-dir "$RAY_TEMP_DIR")
if is_loopback "$HOST"; then
    # `ray start --node-ip-address 127.0.0.1` is rewritten to the machine's interface address
    # (ray._private.services.resolve_ip_for_localhost), and the GCS, raylet and agents then
    # listen on all interfaces. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray uses its
    # single-machine mode (get_node_ip_address() -> loopback), so every Ray server binds
    # 127.0.0.1; the price is that no other node can join this head (use the cluster launcher
    # or KubeRay for multi-node, see cluster/README.md).
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
else
    log "warning: binding Ray to $HOST: anyone who can reach it and holds the token can run code"
    args+=(--node-ip-address "$HOST")
fi
# shellcheck disable=SC2206
[[ -n "${RAY_START_EXTRA_ARGS:-}" ]] && args+=($RAY_START_EXTRA_ARGS)

start_service "Ray head" "$PIDFILE" "$LOGFILE" "$PATTERN" "$READY_TIMEOUT" leader job_server_ready -- ray "${args[@]}"
print_usage
