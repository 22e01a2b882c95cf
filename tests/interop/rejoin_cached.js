// Rejoins with a cached room token after a reconnection (issue 15): socket.io-client 4.x connects, authenticates,
// joins <room> with <room token>, and on every later reconnection authenticates and joins again with the SAME cached
// room token (as Twake's web client does). Prints `authenticated`, `joined <room>`, `join error <json>`,
// `disconnected: <reason>`, `realtime:resource <json>`, one per line; runs until killed.
//
// usage: node tests/interop/rejoin_cached.js <url> <access token> <room> <room token>
"use strict";

const path = require("node:path");
const { io } = require(path.join(__dirname, "node_modules", "sioc4"));

const [url, token, room, roomToken] = process.argv.slice(2);
if (!url || !token || !room || !roomToken) {
  console.error("usage: node rejoin_cached.js <url> <access token> <room> <room token>");
  process.exit(2);
}
const socket = io(url, {
  path: "/socket/",
  transports: ["websocket"],
  reconnectionDelay: 200,
  reconnectionDelayMax: 1000,
});
socket.on("connect", () => socket.emit("authenticate", { token }));
socket.on("authenticated", () => {
  console.log("authenticated");
  socket.emit("realtime:join", { name: room, token: roomToken });
});
socket.on("unauthorized", (e) => console.log("unauthorized", JSON.stringify(e)));
socket.on("realtime:join:success", (e) => console.log("joined", e.name));
socket.on("realtime:join:error", (e) => console.log("join error", JSON.stringify(e)));
socket.on("realtime:resource", (e) => console.log("realtime:resource", JSON.stringify(e)));
socket.on("disconnect", (reason) => console.log("disconnected:", reason));
