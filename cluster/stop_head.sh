#!/usr/bin/env bash
# Stop the Ray head started by cluster/start_head.sh (same RAY_DASHBOARD_PORT or
# RAY_HEAD_STATE_DIR). Only that head: its `ray start --block` process gets SIGTERM, drains the
# node and stops its own process group. Other Ray instances of this user are left alone
# (unlike `ray stop`, which stops every Ray process of the user on the machine).
set -euo pipefail
# shellcheck source=cluster/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

DASH_PORT="${RAY_DASHBOARD_PORT:-8265}"
STATE_DIR="${RAY_HEAD_STATE_DIR:-$STATE_ROOT/ray-head-$DASH_PORT}"
PIDFILE="$STATE_DIR/ray-head.pid"

stop_service "Ray head" "$PIDFILE" "ray start --head" "${RAY_HEAD_STOP_TIMEOUT:-60}" leader
