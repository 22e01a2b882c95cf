#!/usr/bin/env bash
# Test dependency: python-socketio (from PyPI) for the Python client example, tests/interop/python_client.py.
#
#   bash tests/services/python_client.sh ensure   # creates target/python-client/venv once, prints its python
#   bash tests/services/python_client.sh start    # the same, and writes $SERVICES_DIR/python_client.env
#   bash tests/services/python_client.sh stop     # nothing runs
#
# python_client.env: SHARDCAST_TEST_PYTHON   the venv's python, with python-socketio[client]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv="$root/target/python-client/venv"

log() { printf '[python_client.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

ensure() {
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import socketio, websocket' 2>/dev/null; then
    echo "$venv/bin/python"
    return 0
  fi
  py=$(command -v python3) || { log "ERROR: python3 not found"; exit 1; }
  log "creating $venv with $py"
  rm -rf "$venv"
  "$py" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'python-socketio[client]>=5.11,<6' >&2
  echo "$venv/bin/python"
}

case "${1:-ensure}" in
ensure) ensure ;;
start)
  py=$(ensure)
  services_dir="${SERVICES_DIR:-$root/target/services}"
  mkdir -p "$services_dir"
  echo "export SHARDCAST_TEST_PYTHON=$py" >"$services_dir/python_client.env"
  log "python: $py"
  ;;
stop) ;;
*)
  echo "usage: $0 ensure|start|stop" >&2
  exit 2
  ;;
esac
