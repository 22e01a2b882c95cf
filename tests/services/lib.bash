# Shared by the service scripts that run one server process of their own (redis.sh, mongo.sh): sourced, never run.
# Not named *.sh on purpose: tests/run.sh starts every tests/services/*.sh as a service.
#
# Before sourcing, a script sets `pid_file` (where it records its server's PID) and `service_name` (how its log
# lines and messages name the server).

service_log_prefix="${0##*/}"

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$service_log_prefix" -1 "$*"; }
die() {
  log "ERROR: $*"
  exit 1
}

# How long `stop_recorded` waits after SIGTERM before it sends SIGKILL.
stop_timeout_tenths=100

# Stops the process whose PID is in $pid_file, if it runs: SIGTERM, then SIGKILL after 10 s; removes the file.
# Only that PID: never a process found by name (the lead's shared services run from another checkout).
stop_recorded() {
  [ -f "$pid_file" ] || return 0
  local pid waited=0
  pid=$(cat "$pid_file")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "stopping $service_name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
      if [ $waited -ge $stop_timeout_tenths ]; then
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
  fi
  rm -f "$pid_file"
}

# `setsid <command...>` in the background with stdout and stderr to $log_file; records its PID in $pid_file and
# sets `pid` to it.
spawn_recorded() {
  setsid "$@" >"$log_file" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$pid_file"
}

# Prints the server's log, stops it and fails with `message`: a start that did not become ready.
fail_start() {
  cat "$log_file" >&2 || true
  stop_recorded
  die "$1"
}
