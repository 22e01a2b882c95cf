#!/usr/bin/env bash
# Test service: a headless Chromium for the live-page test (tests/live_page.rs), Debian's `chromium` package.
#
#   bash tests/services/chromium.sh ensure   # installs it with apt-get when absent, prints the executable's path
#   bash tests/services/chromium.sh start    # the same, and writes $SERVICES_DIR/chromium.env (tests/run.sh)
#   bash tests/services/chromium.sh stop     # nothing to stop: each test starts and kills its own browser
#
# chromium.env: SHARDCAST_TEST_CHROMIUM   the executable
#
# Environment (optional): CHROMIUM_BIN (use this executable instead).
set -euo pipefail

log() { printf '[chromium.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

find_bin() {
  if [ -n "${CHROMIUM_BIN:-}" ] && [ -x "$CHROMIUM_BIN" ]; then
    echo "$CHROMIUM_BIN"
    return 0
  fi
  for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then
      command -v "$b"
      return 0
    fi
  done
  return 1
}

ensure() {
  if find_bin; then return 0; fi
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  log "installing chromium with apt-get"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
  find_bin || { log "ERROR: chromium did not install"; exit 1; }
}

case "${1:-ensure}" in
ensure) ensure ;;
start)
  bin=$(ensure)
  services_dir="${SERVICES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/services}"
  mkdir -p "$services_dir"
  echo "export SHARDCAST_TEST_CHROMIUM=$bin" >"$services_dir/chromium.env"
  log "chromium: $bin"
  ;;
stop) ;;
*)
  echo "usage: $0 ensure|start|stop" >&2
  exit 2
  ;;
esac
