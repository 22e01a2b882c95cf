// The README's "Try it" client: connects to shardcast with the real socket.io-client 4.x, authenticates, joins the
// rooms given as `room=token` arguments (the `websocket`/`websockets` entries of REST answers) and prints every
// realtime:resource it receives, one JSON line each.
//
// usage: node tests/interop/demo_client.js <url> <access token> <room>=<room token> [...] [--count N]
//   e.g. node tests/interop/demo_client.js http://127.0.0.1:3000 "$TOKEN" "/channels/general/messages=$ROOM_TOKEN"
// Install the client once with `npm ci --prefix tests/interop`. Stops with Ctrl-C, or after --count N events.
//
// Errors are reported and end the client (exit 1): a first connection that fails, an `unauthorized`, a join error,
// or a lost connection that does not come back within 10 attempts. After a reconnection it fetches fresh room tokens
// from the REST API (`GET /api/v1<room>?websockets=true`) before joining again, so it survives a server restart even
// when the room-token key changed.
"use strict";

const path = require("node:path");
const { io } = require(path.join(__dirname, "node_modules", "sioc4"));

const args = process.argv.slice(2);
let count = Infinity;
const countAt = args.indexOf("--count");
if (countAt >= 0) {
  count = Number(args[countAt + 1]);
  args.splice(countAt, 2);
}
const [url, token, ...roomArgs] = args;
if (!url || !token || roomArgs.length === 0) {
  console.error("usage: node demo_client.js <url> <access token> <room>=<room token> [...] [--count N]");
  process.exit(2);
}
const rooms = roomArgs.map((a) => {
  const i = a.lastIndexOf("=");
  return { name: a.slice(0, i), token: a.slice(i + 1) };
});

function fail(text) {
  console.log(text);
  process.exit(1);
}

// A fresh room token for `name` from the REST collection of that room (Twake-style: the room is the collection path).
async function freshToken(name) {
  const res = await fetch(new URL("/api/v1" + name + "?websockets=true&limit=1", url), {
    headers: { Authorization: "Bearer " + token },
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`GET /api/v1${name}: ${res.status} ${body.message || ""}`);
  const ws = (body.websockets || []).find((w) => w.room === name);
  if (!ws) throw new Error(`GET /api/v1${name}: no room token for ${name}`);
  return ws.token;
}

let connectedOnce = false;
let authenticatedOnce = false;
const socket = io(url, { path: "/socket/", transports: ["websocket"], reconnectionAttempts: 10 });
socket.on("connect", () => {
  connectedOnce = true;
  socket.emit("authenticate", { token });
});
socket.on("connect_error", (e) => {
  if (!connectedOnce) fail(`connection error: ${e.message} (is shardcast running at ${url}?)`);
  console.log(`reconnection error: ${e.message}`);
});
socket.io.on("reconnect_failed", () => fail("connection lost: the server did not come back after 10 attempts"));
socket.on("authenticated", async () => {
  console.log("authenticated");
  const again = authenticatedOnce;
  authenticatedOnce = true;
  for (const r of rooms) {
    if (again) {
      try {
        r.token = await freshToken(r.name);
      } catch (e) {
        fail(`cannot refresh the room token of ${r.name}: ${e.message}`);
      }
    }
    socket.emit("realtime:join", r);
  }
});
socket.on("unauthorized", (e) => fail("unauthorized " + JSON.stringify(e)));
socket.on("realtime:join:success", (e) => console.log("joined", e.name));
socket.on("realtime:join:error", (e) => fail("join error " + JSON.stringify(e)));
socket.on("realtime:resource", (e) => {
  console.log("realtime:resource", JSON.stringify(e));
  if (--count <= 0) {
    socket.close();
    process.exit(0);
  }
});
socket.on("disconnect", (reason) => console.log("disconnected:", reason));
