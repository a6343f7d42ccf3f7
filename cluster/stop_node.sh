#!/usr/bin/env bash
# Stop the node started by cluster/join_node.sh (same RAY_DASHBOARD_AGENT_PORT or
# RAY_NODE_STATE_DIR), and only it: its `ray start --block` process gets SIGTERM and stops its
# own process group. The head and other Ray instances are left alone.
set -euo pipefail
# shellcheck source=cluster/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

AGENT_PORT="${RAY_DASHBOARD_AGENT_PORT:-52366}"
STATE_DIR="${RAY_NODE_STATE_DIR:-$STATE_ROOT/ray-node-$AGENT_PORT}"
PIDFILE="$STATE_DIR/ray-node.pid"

stop_service "Ray node" "$PIDFILE" "ray start --address" "${RAY_NODE_STOP_TIMEOUT:-60}" leader
