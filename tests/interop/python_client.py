"""The demo client in Python, with python-socketio (PyPI): connects to shardcast, authenticates, joins the rooms given
as `room=token` arguments and prints every realtime:resource it receives, one JSON line each; exits after --count N
events, and with status 1 on a connection error, an `unauthorized` or a join error.

usage: python tests/interop/python_client.py <url> <access token> <room>=<room token> [...] [--count N]
Install python-socketio once with `bash tests/services/python_client.sh ensure` (it prints the venv's python).
"""

import json
import sys

import socketio


def main() -> int:
    args = sys.argv[1:]
    count = None
    if "--count" in args:
        i = args.index("--count")
        count = int(args[i + 1])
        del args[i : i + 2]
    if len(args) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    url, token, *room_args = args
    rooms = [dict(zip(("name", "token"), a.rsplit("=", 1))) for a in room_args]
    sio = socketio.Client(reconnection=False)
    state = {"left": count, "status": 0}

    def finish(status):
        state["status"] = status
        sio.disconnect()

    @sio.event
    def connect():
        sio.emit("authenticate", {"token": token})

    @sio.on("authenticated")
    def authenticated(*_):
        print("authenticated", flush=True)
        for r in rooms:
            sio.emit("realtime:join", r)

    @sio.on("unauthorized")
    def unauthorized(e):
        print("unauthorized", json.dumps(e), flush=True)
        finish(1)

    @sio.on("realtime:join:success")
    def joined(e):
        print("joined", e["name"], flush=True)

    @sio.on("realtime:join:error")
    def join_error(e):
        print("join error", json.dumps(e), flush=True)
        finish(1)

    @sio.on("realtime:resource")
    def resource(e):
        print("realtime:resource", json.dumps(e, separators=(",", ":")), flush=True)
        if state["left"] is not None:
            state["left"] -= 1
            if state["left"] <= 0:
                finish(0)

    try:
        sio.connect(url, socketio_path="/socket/", transports=["websocket"], wait_timeout=20)
    except socketio.exceptions.ConnectionError as e:
        print(f"connection error: {e}", flush=True)
        return 1
    sio.wait()
    return state["status"]


if __name__ == "__main__":
    sys.exit(main())
