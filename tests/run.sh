#!/usr/bin/env bash
# shardcast's test command (README: "Run the tests"). On a fresh machine it installs and starts everything the
# tests need by itself, then runs: cargo fmt --check, cargo clippy -D warnings, and every test of the workspace.
#
# Services: each tests/services/<name>.sh understands `start` and `stop`. `start` installs what it needs
# (from the package registries), starts the server, waits until it is ready and writes `export VAR=...` lines to
# target/services/<name>.env, which this script sources before `cargo test`. Services start in the background
# while clippy compiles, so their start-up overlaps the build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export SERVICES_DIR="$root/target/services"
mkdir -p "$SERVICES_DIR"

log() { printf '[tests/run.sh %(%H:%M:%S)T] %s\n' -1 "$*"; }

services=()
for s in tests/services/*.sh; do
  [ -e "$s" ] || continue
  services+=("$(basename "$s" .sh)")
done

stop_services() {
  for name in "${services[@]}"; do
    bash "tests/services/$name.sh" stop >/dev/null 2>&1 || true
  done
}
trap stop_services EXIT

# CI builds once from scratch: incremental artefacts would only cost disk.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi
log "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free where the target directory lives"

log "cargo fmt --check"
cargo fmt --all -- --check

# Start the services in the background; each writes its log to target/services/<name>.log.
declare -A pids=()
for name in "${services[@]}"; do
  rm -f "$SERVICES_DIR/$name.env"
  log "starting service $name (log: target/services/$name.log)"
  bash "tests/services/$name.sh" start >"$SERVICES_DIR/$name.log" 2>&1 &
  pids[$name]=$!
done

log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "building tests"
cargo test --workspace --no-run

for name in "${services[@]}"; do
  if ! wait "${pids[$name]}"; then
    log "service $name failed to start; its log follows"
    cat "$SERVICES_DIR/$name.log"
    exit 1
  fi
  # shellcheck disable=SC1090
  source "$SERVICES_DIR/$name.env"
  log "service $name ready"
done

log "cargo test --workspace"
cargo test --workspace
log "all tests passed"
