#!/usr/bin/env bash
# Test service: a MongoDB-wire server, SecantusDB from PyPI (fallback: nx-27017), run as a separate process.
#
#   bash tests/services/mongo.sh start   # install (cached) into target/mongo/venv, start on a free port, wait, record PID
#   bash tests/services/mongo.sh stop    # SIGTERM to the recorded PID, SIGKILL after 10 s
#
# `start` writes to $SERVICES_DIR/mongo.env:
#   SHARDCAST_TEST_MONGO_URI   mongodb://127.0.0.1:<port> of the shared instance
#   SHARDCAST_TEST_MONGO_BIN   the server executable, so fault tests can start (and kill) their own instance
#   SHARDCAST_TEST_MONGO_KIND  secantus | nx (their command lines differ; see tests/orm.rs)
# Everything lives under target/mongo/: venv/ (kept between runs), data/ (wiped at each start), mongo.pid, server.log.
#
# Environment (optional): MONGO_PYTHON (a Python 3.11 interpreter; the SecantusDB wheel is cp311),
# MONGO_START_TIMEOUT_SECS (default 60).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir="$root/target/mongo"
venv="$dir/venv"
services_dir="${SERVICES_DIR:-$root/target/services}"
env_file="$services_dir/mongo.env"
pid_file="$dir/mongo.pid"
log_file="$dir/server.log"
start_timeout_secs="${MONGO_START_TIMEOUT_SECS:-60}"

service_name="the MongoDB-wire server"
# shellcheck source=tests/services/lib.bash
source "$root/tests/services/lib.bash"

pick_python() {
  if [ -n "${MONGO_PYTHON:-}" ]; then
    echo "$MONGO_PYTHON"
    return
  fi
  for p in python3.11 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
      command -v "$p"
      return
    fi
  done
  command -v python3 || die "no python3 found"
}

install() {
  if [ -x "$venv/bin/secantusd-py" ] || [ -x "$venv/bin/nx-27017" ]; then
    return
  fi
  local py
  py=$(pick_python)
  log "creating venv with $py"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  if "$venv/bin/pip" install --quiet --disable-pip-version-check 'secantusdb==0.7.0b3'; then
    log "installed secantusdb 0.7.0b3"
  else
    log "secantusdb did not install; falling back to nx-27017"
    "$venv/bin/pip" install --quiet --disable-pip-version-check nx-27017 || die "neither secantusdb nor nx-27017 installed"
  fi
}

free_port() {
  "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
  local port=$1 pid=$2 deadline=$((SECONDS + start_timeout_secs))
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    if "$venv/bin/python" -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(('127.0.0.1', $port)) == 0 else 1)"; then
      return 0
    fi
    sleep 0.3
  done
  return 1
}

start() {
  mkdir -p "$dir" "$services_dir"
  stop_recorded
  install
  local port data kind pid
  port=$(free_port)
  data="$dir/data"
  rm -rf "$data"
  mkdir -p "$data"
  if [ -x "$venv/bin/secantusd-py" ]; then
    kind=secantus
    log "starting secantusd-py on 127.0.0.1:$port"
    spawn_recorded "$venv/bin/secantusd-py" --host 127.0.0.1 --port "$port" --storage-path "$data"
  else
    kind=nx
    log "starting nx-27017 on 127.0.0.1:$port"
    spawn_recorded "$venv/bin/nx-27017" --data-dir "$data" --host 127.0.0.1 -p "$port" --pid-file "$data/nx.pid"
  fi
  if ! wait_port "$port" "$pid"; then
    fail_start "the server did not accept connections on port $port within ${start_timeout_secs} s"
  fi
  local bin="$venv/bin/secantusd-py"
  [ "$kind" = nx ] && bin="$venv/bin/nx-27017"
  {
    echo "export SHARDCAST_TEST_MONGO_URI=mongodb://127.0.0.1:$port"
    echo "export SHARDCAST_TEST_MONGO_BIN=$bin"
    echo "export SHARDCAST_TEST_MONGO_KIND=$kind"
  } >"$env_file"
  log "ready: mongodb://127.0.0.1:$port (pid $pid, $kind)"
}

case "${1:-}" in
  start) start ;;
  stop) stop_recorded ;;
  *) die "usage: $0 start|stop" ;;
esac
