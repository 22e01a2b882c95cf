#!/usr/bin/env bash
# Test service: a real Redis server (Debian's redis-server package), run as our own process, never the system service.
#
#   bash tests/services/redis.sh start   # install with apt-get if missing, start on a free port, wait for PONG, record PID
#   bash tests/services/redis.sh stop    # SIGTERM to the recorded PID, SIGKILL after 10 s
#
# `start` writes to $SERVICES_DIR/redis.env:
#   SHARDCAST_TEST_REDIS_URL   redis://127.0.0.1:<port> of the shared instance
#   SHARDCAST_TEST_REDIS_BIN   the redis-server executable, so fault tests can start (and stop) their own instance
# Everything lives under target/redis/: data/ (wiped at each start), redis.pid, server.log.
#
# Environment (optional): REDIS_START_TIMEOUT_SECS (default 30).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir="$root/target/redis"
services_dir="${SERVICES_DIR:-$root/target/services}"
env_file="$services_dir/redis.env"
pid_file="$dir/redis.pid"
log_file="$dir/server.log"
start_timeout_secs="${REDIS_START_TIMEOUT_SECS:-30}"

service_name=redis-server
# shellcheck source=tests/services/lib.bash
source "$root/tests/services/lib.bash"

install() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return
  fi
  log "installing Debian's redis-server with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null || die "apt-get install redis-server failed"
  # The package may start the system service; we never use it (our own process, our own port).
  command -v redis-server >/dev/null 2>&1 || die "redis-server is not on PATH after installing"
}

free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 30000))
    if ! (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

start() {
  mkdir -p "$dir" "$services_dir"
  stop_recorded
  install
  local port data pid bin deadline
  bin=$(command -v redis-server)
  port=$(free_port)
  data="$dir/data"
  rm -rf "$data"
  mkdir -p "$data"
  log "starting $bin on 127.0.0.1:$port"
  spawn_recorded "$bin" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$data" --daemonize no
  deadline=$((SECONDS + start_timeout_secs))
  until [ "$(redis-cli -p "$port" PING 2>/dev/null)" = "PONG" ]; do
    if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      fail_start "redis-server did not answer PING on port $port within ${start_timeout_secs} s"
    fi
    sleep 0.1
  done
  {
    echo "export SHARDCAST_TEST_REDIS_URL=redis://127.0.0.1:$port"
    echo "export SHARDCAST_TEST_REDIS_BIN=$bin"
  } >"$env_file"
  log "ready: redis://127.0.0.1:$port (pid $pid)"
}

case "${1:-}" in
  start) start ;;
  stop) stop_recorded ;;
  *) die "usage: $0 start|stop" ;;
esac
