// The README's "Try it" client: connects to shardcast with the real socket.io-client 4.x, authenticates, joins the
// rooms given as `room=token` arguments (the `websocket`/`websockets` entries of REST answers) and prints every
// realtime:resource it receives, one JSON line each.
//
// usage: node tests/interop/demo_client.js <url> <access token> <room>=<room token> [...]
//   e.g. node tests/interop/demo_client.js http://127.0.0.1:3000 "$TOKEN" "/channels/general/messages=$ROOM_TOKEN"
// Install the client once with `npm ci --prefix tests/interop`. Stops with Ctrl-C, or after --count N events.
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

const socket = io(url, { path: "/socket/", transports: ["websocket"] });
socket.on("connect", () => socket.emit("authenticate", { token }));
socket.on("authenticated", () => {
  console.log("authenticated");
  for (const r of rooms) socket.emit("realtime:join", r);
});
socket.on("unauthorized", (e) => {
  console.log("unauthorized", JSON.stringify(e));
  process.exit(1);
});
socket.on("realtime:join:success", (e) => console.log("joined", e.name));
socket.on("realtime:join:error", (e) => console.log("join error", JSON.stringify(e)));
socket.on("realtime:resource", (e) => {
  console.log("realtime:resource", JSON.stringify(e));
  if (--count <= 0) {
    socket.close();
    process.exit(0);
  }
});
socket.on("disconnect", (reason) => console.log("disconnected:", reason));
