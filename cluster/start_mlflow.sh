#!/usr/bin/env bash
# Start an MLflow tracking server on 127.0.0.1 in the background: SQLite backend store,
# artifacts proxied by the server (clients upload/download over HTTP and need no access to the
# artifact directory). Idempotent: if it is already running it says so and exits 0.
#
# Environment (all optional):
#   MLFLOW_HOST     bind address (default 127.0.0.1). MLflow's security middleware stays on
#                   (only localhost/private Host headers); to serve other hosts pass
#                   --allowed-hosts in MLFLOW_SERVER_EXTRA_ARGS, never
#                   --disable-security-middleware.
#   MLFLOW_PORT     port (default 5000)
#   MLFLOW_HOME     server directory (default ./mlflow-server): mlflow.db, artifacts/,
#                   mlflow-server.pid, mlflow-server.log
#   MLFLOW_WORKERS  uvicorn workers (default 1)
#   MLFLOW_SERVER_EXTRA_ARGS  extra `mlflow server` arguments (word-split)
set -euo pipefail
# shellcheck source=cluster/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
HOME_DIR="${MLFLOW_HOME:-./mlflow-server}"
mkdir -p "$HOME_DIR/artifacts"
HOME_DIR="$(cd "$HOME_DIR" && pwd)"
PIDFILE="$HOME_DIR/mlflow-server.pid"
LOGFILE="$HOME_DIR/mlflow-server.log"
URL="http://$HOST:$PORT"
PATTERN="mlflow server"
READY_TIMEOUT="${MLFLOW_READY_TIMEOUT:-90}"

command -v mlflow >/dev/null || die "'mlflow' not found on PATH (run 'make install' or activate the venv)"
healthy() { [[ "$(curl -s --max-time 5 "$URL/health")" == OK ]]; }
print_usage() {
    cat <<EOF
MLflow server: $URL (store sqlite:///$HOME_DIR/mlflow.db, artifacts $HOME_DIR/artifacts, log $LOGFILE)
  export MLFLOW_TRACKING_URI=$URL
Stop: cluster/stop_mlflow.sh   (same MLFLOW_HOME)
EOF
}

if pid_alive "$PIDFILE" "$PATTERN"; then
    log "already running (pid $(cat "$PIDFILE"))"
    for _ in $(seq 60); do healthy && break; sleep 0.5; done
    healthy || die "server process is alive but $URL/health does not answer; see $LOGFILE"
    print_usage
    exit 0
fi
port_open "$HOST" "$PORT" && die "port $PORT on $HOST is in use by another process; choose another MLFLOW_PORT"
is_loopback "$HOST" || log "warning: binding MLflow to $HOST (no authentication): trusted networks only"

args=(server --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-1}"
    --backend-store-uri "sqlite:///$HOME_DIR/mlflow.db"
    --serve-artifacts --artifacts-destination "$HOME_DIR/artifacts")
# shellcheck disable=SC2206
[[ -n "${MLFLOW_SERVER_EXTRA_ARGS:-}" ]] && args+=($MLFLOW_SERVER_EXTRA_ARGS)
[[ " ${args[*]} " == *" --disable-security-middleware "* ]] &&
    die "--disable-security-middleware is refused here (DESIGN §4); use --allowed-hosts"

# No background job runner (huey workers): 2 processes / ~0.5 GB instead of ~15 / ~3 GB.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
start_service "MLflow server at $URL" "$PIDFILE" "$LOGFILE" "$PATTERN" "$READY_TIMEOUT" group healthy -- mlflow "${args[@]}"
print_usage
