# Shared helpers for the cluster/ scripts (sourced, not executed).
# shellcheck shell=bash

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$CLUSTER_DIR/.." && pwd)"

# Prefer the project's venv: the head's PATH decides which `python` a submitted job runs.
if [[ -z "${VIRTUAL_ENV:-}" && -x "$REPO_DIR/.venv/bin/python" ]]; then
    export PATH="$REPO_DIR/.venv/bin:$PATH"
fi

# shellcheck disable=SC2034  # used by the scripts that source this file
STATE_ROOT="${XDG_STATE_HOME:-$HOME/.local/state}/cascade_dist"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*"; }
die() { printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

is_loopback() { [[ "$1" == 127.* || "$1" == localhost || "$1" == ::1 ]]; }

# True when something accepts TCP connections on host:port (bash /dev/tcp, no extra tools).
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# pid_alive PIDFILE PATTERN: the pid in PIDFILE is running and its command line matches PATTERN
# (guards against a stale pid file whose pid was reused by an unrelated process).
pid_alive() {
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(cat "$1")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# descendants PID: every live descendant of PID (Ray's worker processes start their own process
# groups, so the process group alone does not cover a head's workers and job drivers).
descendants() {
    ps -eo pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            keep[root] = 1; changed = 1
            while (changed) {
                changed = 0
                for (i in pids) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
            }
            for (p in keep) if (p != root) print p
        }'
}

# stop_group PIDFILE PATTERN TIMEOUT_S MODE: MODE=leader sends SIGTERM to the leader only (it
# shuts its children down itself), MODE=group to the whole process group. Waits until the
# group and every descendant of the leader are gone; SIGKILLs what is left after TIMEOUT_S.
stop_group() {
    local pidfile="$1" pattern="$2" timeout="$3" mode="$4" pid deadline procs
    if ! pid_alive "$pidfile" "$pattern"; then
        rm -f "$pidfile"
        return 1
    fi
    pid="$(cat "$pidfile")"
    procs="$pid $(descendants "$pid" | tr '\n' ' ')"
    if [[ "$mode" == leader ]]; then kill -TERM "$pid"; else kill -TERM -- "-$pid"; fi
    deadline=$((SECONDS + timeout))
    # shellcheck disable=SC2086  # $procs is a list of pids
    while pgrep -g "$pid" >/dev/null || alive_any $procs; do
        if ((SECONDS >= deadline)); then
            log "still running after ${timeout}s: SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || true
            # shellcheck disable=SC2086
            kill -KILL $procs 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
    return 0
}

# alive_any PID...: at least one of the PIDs is still running (zombies count as gone)
alive_any() {
    local p state
    for p in "$@"; do
        state="$(ps -o stat= -p "$p" 2>/dev/null)" || continue
        [[ -n "$state" && "$state" != Z* ]] && return 0
    done
    return 1
}

# start_service WHAT PIDFILE LOGFILE PATTERN TIMEOUT_S MODE READY -- COMMAND...: runs COMMAND in
# its own process group (setsid: the stop script stops exactly it), records its pid, and waits
# until the shell command READY succeeds. If COMMAND exits first, or READY_S passes (then it is
# stopped, MODE as in stop_group), it dies with the log's tail. Prints how long it took.
start_service() {
    local what="$1" pidfile="$2" logfile="$3" pattern="$4" timeout="$5" mode="$6" ready="$7" pid deadline
    shift 8  # ... and the "--"
    local start_t=$SECONDS
    setsid "$@" >"$logfile" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pidfile"
    log "starting $what (pid $pid) ..."
    deadline=$((SECONDS + timeout))
    until eval "$ready"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pidfile"
            tail -n 20 "$logfile" >&2
            die "$what exited; full log: $logfile"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$logfile" >&2
            stop_group "$pidfile" "$pattern" 30 "$mode" || true
            die "$what was not ready within ${timeout}s; stopped; log: $logfile"
        fi
        sleep 0.25
    done
    log "$what ready in $((SECONDS - start_t))s; log $logfile"
}

# stop_service WHAT PIDFILE PATTERN TIMEOUT_S MODE: stops what start_service started (stop_group),
# or says that nothing runs from PIDFILE's directory; exits 0 either way (idempotent).
stop_service() {
    local start_t=$SECONDS
    if stop_group "$2" "$3" "$4" "$5"; then
        log "$1 stopped in $((SECONDS - start_t))s"
    else
        log "no $1 running from $(dirname "$2") (nothing to stop)"
    fi
}
