// Many real socket.io-client sockets speaking shardcast's realtime wire contract, driven line by line by
// tests/realtime_e2e.rs. usage: node realtime_clients.js <4|2> <config.json>
//
// config.json: { "url": "http://127.0.0.1:port", "clients": [{ "user", "token", "channel", "auth": "connect"|"event" }] }
// Each client asks the REST API for its room token (GET /api/v1/channels/<channel>/messages?websockets=true with
// its own access token), connects (token in the CONNECT auth payload (4.x), or with `authenticate`),
// joins the room and records every `realtime:resource` it receives.
//
// stdout lines: `CLIENT <i> <shard>` per client then `READY`; commands on stdin and their answers:
//   COLLECT <marker>  -> waits until every joined client got a `created` whose resource.text is <marker>, then prints
//                        `EVENTS <i> <json array>` for every client (the events since the previous COLLECT), `COLLECTED`
//   LEAVE <i>         -> realtime:leave, `LEFT <i> <json of the answer>`
//   JOIN <i>          -> realtime:join again, `JOINED <i> <json of the answer>`
//   RECONNECT <i>     -> closes the socket, opens a new connection, authenticates and joins: `RECONNECTED <i>`
//   QUIT              -> closes every socket, prints `PASS`, exits 0
// Anything unexpected prints `FAIL <reason>` and exits 1.
"use strict";

const fs = require("fs");
const readline = require("readline");

const [, , major, configPath] = process.argv;
const io = require(major === "2" ? "sioc2" : "sioc4");
const v2 = major === "2";
const config = JSON.parse(fs.readFileSync(configPath, "utf8"));
const url = config.url;

function fail(msg) {
  console.log(`FAIL ${msg}`);
  process.exit(1);
}
function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}

async function roomToken(c) {
  const res = await fetch(`${url}/api/v1/channels/${c.channel}/messages?websockets=true&limit=1`, {
    headers: { Authorization: `Bearer ${c.token}` },
  });
  const body = await res.json();
  if (res.status !== 200 || !Array.isArray(body.websockets) || body.websockets.length !== 1) {
    fail(`room token for ${c.user}: ${res.status} ${JSON.stringify(body)}`);
  }
  return body.websockets[0];
}

function open(c) {
  const opts = { forceNew: true, reconnection: false, transports: ["websocket"] };
  // socket.io-client 2.x sends no CONNECT packet for the main namespace, so it has no way to carry a token there.
  if (c.auth === "connect") {
    if (v2) fail("2.x clients authenticate with the authenticate event");
    opts.auth = { token: c.token };
  }
  return io(url, opts);
}

async function connectAndJoin(c) {
  const socket = open(c);
  c.socket = socket;
  socket.on("realtime:resource", (ev) => c.events.push(ev));
  const authed = once(socket, "authenticated");
  const [err] = await Promise.race([
    once(socket, "connect").then(() => [null]),
    once(socket, v2 ? "error" : "connect_error"),
  ]);
  if (err) fail(`connect ${c.user}: ${err.message || err}`);
  c.shard = parseInt(socket.io.engine.id.slice(0, 2), 16);
  if (c.auth === "event") socket.emit("authenticate", { token: c.token });
  const unauthorized = once(socket, "unauthorized").then(([e]) => fail(`unauthorized ${c.user}: ${JSON.stringify(e)}`));
  await Promise.race([authed, unauthorized]);
  await join(c);
}

async function join(c) {
  const ok = once(c.socket, "realtime:join:success");
  const ko = once(c.socket, "realtime:join:error");
  c.socket.emit("realtime:join", { name: c.room.room, token: c.room.token });
  const [answer] = await Promise.race([ok, ko.then(([e]) => fail(`join ${c.user}: ${JSON.stringify(e)}`))]);
  c.joined = true;
  return answer;
}

function seen(c, marker) {
  return c.events.some((e) => e.action === "created" && e.resource && e.resource.text === marker);
}

async function collect(clients, marker) {
  while (!clients.every((c) => !c.joined || seen(c, marker))) {
    await new Promise((r) => setTimeout(r, 5));
  }
  clients.forEach((c, i) => {
    console.log(`EVENTS ${i} ${JSON.stringify(c.events)}`);
    c.events = [];
  });
  console.log("COLLECTED");
}

async function main() {
  const clients = config.clients.map((c) => Object.assign({ events: [], joined: false }, c));
  for (const c of clients) c.room = await roomToken(c);
  // Connect in batches so a 2-core machine is not flooded with 200 handshakes at once.
  for (let i = 0; i < clients.length; i += 20) {
    await Promise.all(clients.slice(i, i + 20).map(connectAndJoin));
  }
  clients.forEach((c, i) => console.log(`CLIENT ${i} ${c.shard}`));
  console.log("READY");

  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [cmd, arg] = line.trim().split(" ");
    const c = clients[Number(arg)];
    if (cmd === "COLLECT") {
      await collect(clients, arg);
    } else if (cmd === "LEAVE") {
      const ok = once(c.socket, "realtime:leave:success");
      c.socket.emit("realtime:leave", { name: c.room.room });
      const [answer] = await ok;
      c.joined = false;
      console.log(`LEFT ${arg} ${JSON.stringify(answer)}`);
    } else if (cmd === "JOIN") {
      const answer = await join(c);
      console.log(`JOINED ${arg} ${JSON.stringify(answer)}`);
    } else if (cmd === "RECONNECT") {
      c.socket.off("realtime:resource");
      c.socket.close();
      c.joined = false;
      await connectAndJoin(c);
      console.log(`RECONNECTED ${arg} ${c.shard}`);
    } else if (cmd === "QUIT") {
      clients.forEach((c) => c.socket.close());
      console.log("PASS");
      process.exit(0);
    } else {
      fail(`unknown command ${line}`);
    }
  }
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
