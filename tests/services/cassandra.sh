#!/usr/bin/env bash
# Test service: a single-node Apache Cassandra 5.0 assembled from Maven Central and run on Java 17.
#
#   bash tests/services/cassandra.sh start   # download (cached), configure, start, wait until CQL answers
#   bash tests/services/cassandra.sh stop    # SIGTERM to the recorded PID, SIGKILL after 30 s
#
# `start` writes `export SHARDCAST_TEST_CQL_NODES=127.0.0.1:<port>` to $SERVICES_DIR/cassandra.env.
# Everything lives under target/cassandra/: m2/ (Maven repository), lib/ (the server's jars, kept between runs),
# conf/ (cassandra.yaml and logback.xml written from tests/services/cassandra/), data/ (wiped at each start),
# logs/cassandra.out (the server's console), tmp/ (JVM temp dir; JNA unpacks its native part there), probe/ (the
# compiled readiness probe, tests/services/cassandra/CqlCheck.java).
#
# Environment (all optional):
#   CASSANDRA_JAVA                 Java 17 binary (Cassandra 5.0 needs 17; it fails on JDK 24+)
#   CASSANDRA_HEAP                 heap size for -Xms/-Xmx (default 1g)
#   CASSANDRA_START_TIMEOUT_SECS   how long `start` waits for CQL to answer (default 300: 2 shared cores while the
#                                  tests compile; it takes 25-65 s)
#   CASSANDRA_DIR                  working directory of this instance (default target/cassandra; the jars always stay
#                                  in target/cassandra/lib), so a test can run a second instance of its own
#   CASSANDRA_NATIVE_PORT          CQL port (default: a free port)
#   CASSANDRA_STORAGE_PORT         internode port (default: a free port)
#   CASSANDRA_KEEP_DATA=1          keep the data directory (to restart an instance with its data and ports)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
support="$root/tests/services/cassandra"
dir=$(realpath -m "${CASSANDRA_DIR:-$root/target/cassandra}")
services_dir="${SERVICES_DIR:-$root/target/services}"
env_file="$services_dir/cassandra.env"
pid_file="$dir/cassandra.pid"
stop_marker="$dir/stop.requested"
log_file="$dir/logs/cassandra.out"
lib="$root/target/cassandra/lib"
probe_classes="$root/target/cassandra/probe"
m2="$root/target/cassandra/m2"
java="${CASSANDRA_JAVA:-/usr/lib/jvm/java-17-openjdk-amd64/bin/java}"
heap="${CASSANDRA_HEAP:-1g}"
start_timeout_secs="${CASSANDRA_START_TIMEOUT_SECS:-300}"
stop_timeout_secs=30

log() { printf '[cassandra.sh %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() {
  log "ERROR: $*"
  exit 1
}

# Returns 0 when the process in the PID file is alive (and is a java process).
recorded_pid_alive() {
  [ -f "$pid_file" ] || return 1
  local pid
  pid=$(cat "$pid_file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q CassandraDaemon "/proc/$pid/cmdline" 2>/dev/null
}

stop_recorded() {
  if ! recorded_pid_alive; then
    rm -f "$pid_file"
    return 0
  fi
  local pid waited=0
  pid=$(cat "$pid_file")
  log "stopping Cassandra (pid $pid) with SIGTERM"
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge "$stop_timeout_secs" ]; then
      log "Cassandra (pid $pid) still running after ${stop_timeout_secs} s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 1
    waited=$((waited + 1))
  done
  # Reap if it is our child; otherwise wait for the kernel to drop it.
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  rm -f "$pid_file"
  log "Cassandra stopped"
}

# A free port BELOW the kernel's ephemeral range: a port taken from that range (bind to port 0) can be handed to
# another process's outgoing connection or listener in the seconds before Cassandra binds it, which under a
# test run's thousands of connections happened ("Cassandra exited during start-up").
free_port() {
  python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
floor = 10000 if low > 20000 else 1024
while True:
    p = random.randrange(floor, low if low > floor + 1000 else 65535)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break'
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# After Cassandra exited during start-up: true (and logged) when one of its ports was taken by another process
# before it bound it and a new attempt with new ports may follow (at most 3 attempts, never with ports given).
port_was_taken() { # attempt
  [ "$1" -lt 3 ] && [ -z "${CASSANDRA_NATIVE_PORT:-}${CASSANDRA_STORAGE_PORT:-}" ] &&
    grep -q -E 'Address already in use|BindException' "$log_file" 2>/dev/null || return 1
  log "a port was taken before Cassandra bound it (attempt $1); retrying with new ports"
  rm -f "$pid_file"
}

fail_with_log() {
  log "ERROR: $*"
  if [ -f "$log_file" ]; then
    log "last 60 lines of $log_file (cut to 400 characters):"
    tail -n 60 "$log_file" | cut -c1-400 >&2
  fi
  stop_recorded
  exit 1
}

fetch_jars() {
  local stamp="$lib/.complete" want
  want=$(sha256sum "$support/pom.xml" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "jars cached in $lib ($(find "$lib" -name '*.jar' | wc -l) jars)"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven)"
  rm -rf "$lib"
  log "downloading Cassandra and its dependencies from Maven Central into $lib"
  local t0=$SECONDS
  if ! mvn -B -q -f "$support/pom.xml" -Dmaven.repo.local="$m2" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$lib" >"$dir/mvn.out" 2>&1; then
    tail -n 40 "$dir/mvn.out" >&2
    die "mvn copy-dependencies failed (full output: $dir/mvn.out)"
  fi
  [ -f "$lib/jamm-0.4.0.jar" ] || die "jamm-0.4.0.jar missing from $lib (the -javaagent below needs it)"
  echo "$want" >"$stamp"
  log "downloaded $(find "$lib" -name '*.jar' | wc -l) jars in $((SECONDS - t0)) s ($(du -sh "$lib" | cut -f1))"
}

# Compiles the readiness probe (tests/services/cassandra/CqlCheck.java) once; recompiled when the source changes.
compile_probe() {
  local stamp="$probe_classes/.source" want javac
  want=$(sha256sum "$support/CqlCheck.java" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$probe_classes/CqlCheck.class" ]; then
    return 0
  fi
  javac="$(dirname "$java")/javac"
  [ -x "$javac" ] || die "javac not found next to $java (install openjdk-17-jdk-headless)"
  rm -rf "$probe_classes"
  mkdir -p "$probe_classes"
  "$javac" -nowarn -cp "$lib/*" -d "$probe_classes" "$support/CqlCheck.java" || die "cannot compile $support/CqlCheck.java"
  echo "$want" >"$stamp"
}

write_config() {
  local native_port=$1 storage_port=$2
  mkdir -p "$dir/conf"
  sed -e "s|@DIR@|$dir|g" -e "s|@NATIVE_PORT@|$native_port|g" -e "s|@STORAGE_PORT@|$storage_port|g" \
    "$support/cassandra.yaml" >"$dir/conf/cassandra.yaml"
  cp "$support/logback.xml" "$dir/conf/logback.xml"
}

start() { # [attempt]
  local attempt=${1:-1}
  mkdir -p "$dir" "$lib" "$services_dir"
  rm -f "$stop_marker" "$env_file"
  stop_recorded

  [ -x "$java" ] || die "Java 17 not found at $java (install openjdk-17-jre-headless or set CASSANDRA_JAVA)"
  local java_version
  java_version=$("$java" -version 2>&1)
  case "$java_version" in
    *'version "17'*) ;;
    *) die "$java is not Java 17: ${java_version%%$'\n'*}" ;;
  esac

  fetch_jars
  compile_probe

  local native_port storage_port
  native_port="${CASSANDRA_NATIVE_PORT:-$(free_port)}"
  storage_port="${CASSANDRA_STORAGE_PORT:-$(free_port)}"
  while [ "$storage_port" = "$native_port" ]; do storage_port=$(free_port); done
  write_config "$native_port" "$storage_port"
  if [ "${CASSANDRA_KEEP_DATA:-0}" != 1 ]; then
    rm -rf "$dir/data"
  fi
  rm -rf "$dir/tmp"
  mkdir -p "$dir/data" "$dir/logs" "$dir/tmp" "$dir/triggers"

  local jvm_opts=(
    "-Xms$heap" "-Xmx$heap" -Xss256k -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError
    -Djava.net.preferIPv4Stack=true -Djdk.attach.allowAttachSelf=true -Dchronicle.analytics.disable=true
    -Dio.netty.tryReflectionSetAccessible=true
    -Djava.io.tmpdir="$dir/tmp" -Djna.tmpdir="$dir/tmp"
    # From Cassandra 5.0's conf/jvm17-server.options.
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.management/com.sun.jmx.remote.security=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
    "-javaagent:$lib/jamm-0.4.0.jar"
    -Dcassandra-foreground=yes
    -Dcassandra.config="file://$dir/conf/cassandra.yaml"
    -Dcassandra.storagedir="$dir/data"
    -Dcassandra.logdir="$dir/logs"
    -Dlogback.configurationFile="$dir/conf/logback.xml"
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.unsafesystem=true
    -Dcassandra.triggers_dir="$dir/triggers"
  )

  log "starting Cassandra on 127.0.0.1:$native_port (storage port $storage_port, heap $heap, log $log_file)"
  local t0=$SECONDS
  # setsid: the server must not die with the shell that started it (tests/run.sh runs this script in the background).
  setsid "$java" "${jvm_opts[@]}" -cp "$dir/conf:$lib/*" org.apache.cassandra.service.CassandraDaemon \
    >"$log_file" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$pid_file"

  # Wait for the native port, then for a real CQL query.
  while ! port_open "$native_port"; do
    [ -f "$stop_marker" ] && fail_with_log "stop requested while starting"
    if ! kill -0 "$pid" 2>/dev/null; then
      if port_was_taken "$attempt"; then start "$((attempt + 1))"; return; fi
      fail_with_log "Cassandra exited during start-up (see its log)"
    fi
    [ $((SECONDS - t0)) -lt "$start_timeout_secs" ] ||
      fail_with_log "native port $native_port not open after ${start_timeout_secs} s"
    sleep 1
  done
  log "native port $native_port open after $((SECONDS - t0)) s"

  local check_out
  while :; do
    check_out=$("$java" -XX:TieredStopAtLevel=1 -Dlogback.configurationFile="$dir/conf/logback.xml" \
      -cp "$probe_classes:$lib/*" CqlCheck 127.0.0.1 "$native_port" 2>&1 |
      grep -E '^(release_version|not ready)' | head -n 1) || true
    case "$check_out" in
      release_version*) break ;;
    esac
    [ -f "$stop_marker" ] && fail_with_log "stop requested while starting"
    if ! kill -0 "$pid" 2>/dev/null; then
      if port_was_taken "$attempt"; then start "$((attempt + 1))"; return; fi
      fail_with_log "Cassandra exited during start-up (see its log)"
    fi
    [ $((SECONDS - t0)) -lt "$start_timeout_secs" ] ||
      fail_with_log "SELECT release_version FROM system.local did not succeed within ${start_timeout_secs} s: $check_out"
    sleep 2
  done

  local rss_kib
  rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  log "Cassandra ready after $((SECONDS - t0)) s: ${check_out}, pid $pid, RSS $((rss_kib / 1024)) MiB"
  echo "export SHARDCAST_TEST_CQL_NODES=127.0.0.1:$native_port" >"$env_file"
  log "wrote $env_file"
}

case "${1:-}" in
  start) start ;;
  stop)
    mkdir -p "$dir"
    touch "$stop_marker"
    stop_recorded
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
