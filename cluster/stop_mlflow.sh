#!/usr/bin/env bash
# Stop the MLflow server started by cluster/start_mlflow.sh (same MLFLOW_HOME): SIGTERM to its
# process group (server + uvicorn workers), wait until every process is gone.
set -euo pipefail
# shellcheck source=cluster/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

HOME_DIR="${MLFLOW_HOME:-./mlflow-server}"
PIDFILE="$HOME_DIR/mlflow-server.pid"

stop_service "MLflow server" "$PIDFILE" "mlflow server" "${MLFLOW_STOP_TIMEOUT:-30}" group
