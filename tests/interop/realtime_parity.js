// Real socket.io-client sockets on chosen shards, driven by JSON lines from tests/realtime_parity.rs.
// usage: node realtime_parity.js <4|2> <config.json>
//
// config.json: { "url", "clients": [{ "user", "token", "shard", "connect_auth"? }] }. Each client connects until its
// Engine.IO session lands on `shard` (the sid's first byte; at most 64 tries), authenticates (the `authenticate` event;
// 4.x with `connect_auth`: the token in the CONNECT auth payload) and records every `realtime:event`, `realtime:event:error` and `realtime:resource`.
// stdout: `CLIENT <i> <shard>` per client, then `READY`. Commands on stdin, one JSON object a line:
//   {"op":"join","i","name","token"}   -> `JOINED <json [event, payload]>` (success or error, whichever comes)
//   {"op":"emit","i","event","payload"} -> nothing (the client emits it)
//   {"op":"emits","i","list":[[event, payload], ...]} -> nothing (the client emits them all at once)
//   {"op":"emit_ack","i","event","payload"} -> `ACK <json of the ack's arguments>` (at most 5 s)
//   {"op":"collect","markers":[m...],"expect":[i...]} -> waits until every client in `expect` received a
//        `realtime:event` whose data.marker is each of `markers`, then 300 ms more, then prints `EVENTS <json>`: per
//        client the [event, payload] pairs since the previous collect. {"op":"collect","wait":[[i, [m...]], ...]}
//        waits for each client's own markers instead.
//   {"op":"close","i"} -> closes the socket, `CLOSED <i>`; {"op":"open","i"} -> connects it again, `OPENED <i>`
//   {"op":"quit"} -> closes every socket, prints PASS
// Anything unexpected prints `FAIL <reason>` and exits 1.
"use strict";

const fs = require("fs");
const readline = require("readline");

const [, , major, configPath] = process.argv;
const io = require(major === "2" ? "sioc2" : "sioc4");
const v2 = major === "2";
const { url, clients } = JSON.parse(fs.readFileSync(configPath, "utf8"));
const RECORDED = ["realtime:event", "realtime:event:error", "realtime:resource"];

function fail(msg) {
  console.log(`FAIL ${msg}`);
  process.exit(1);
}
function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function connectOnShard(c) {
  for (let attempt = 0; attempt < 64; attempt++) {
    const opts = { forceNew: true, reconnection: false, transports: ["websocket"] };
    // Only with `connect_auth` (4.x): a socket that lands on the wrong shard would otherwise be authenticated, and
    // its connect/disconnect seen by the hooks, before it is closed.
    if (!v2 && c.connect_auth) opts.auth = { token: c.token };
    const socket = io(url, opts);
    // Listen before the CONNECT reply: with the token in CONNECT, `authenticated` follows it at once.
    const authed = once(socket, "authenticated");
    const events = [];
    for (const name of RECORDED) socket.on(name, (p) => events.push([name, p]));
    const [err] = await Promise.race([
      once(socket, "connect").then(() => [null]),
      once(socket, v2 ? "error" : "connect_error"),
    ]);
    if (err) fail(`connect ${c.user}: ${err.message || err}`);
    const shard = parseInt(socket.io.engine.id.slice(0, 2), 16);
    if (shard !== c.shard) {
      socket.close();
      continue;
    }
    c.socket = socket;
    c.events = events;
    if (!opts.auth) socket.emit("authenticate", { token: c.token });
    const ko = once(socket, "unauthorized").then(([e]) => fail(`unauthorized ${c.user}: ${JSON.stringify(e)}`));
    await Promise.race([authed, ko]);
    return shard;
  }
  fail(`${c.user}: never landed on shard ${c.shard}`);
}

function hasMarkers(c, markers) {
  return markers.every((m) =>
    c.events.some(([name, p]) => name === "realtime:event" && p && p.data && p.data.marker === m)
  );
}

async function command(cmd) {
  const c = clients[cmd.i];
  switch (cmd.op) {
    case "join": {
      const ok = once(c.socket, "realtime:join:success").then(([p]) => ["realtime:join:success", p]);
      const ko = once(c.socket, "realtime:join:error").then(([p]) => ["realtime:join:error", p]);
      c.socket.emit("realtime:join", { name: cmd.name, token: cmd.token });
      const answer = await Promise.race([ok, ko]);
      c.socket.off("realtime:join:success");
      c.socket.off("realtime:join:error");
      console.log(`JOINED ${JSON.stringify(answer)}`);
      break;
    }
    case "emit":
      c.socket.emit(cmd.event, cmd.payload);
      break;
    case "emits":
      for (const [event, payload] of cmd.list) c.socket.emit(event, payload);
      break;
    case "emit_ack": {
      const got = new Promise((resolve) => c.socket.emit(cmd.event, cmd.payload, (...args) => resolve(args)));
      const args = await Promise.race([got, sleep(5000).then(() => fail(`no ack for ${cmd.event}`))]);
      console.log(`ACK ${JSON.stringify(args)}`);
      break;
    }
    case "collect": {
      const deadline = Date.now() + 10000;
      const wait = cmd.wait || cmd.expect.map((i) => [i, cmd.markers]);
      const missing = () => wait.filter(([i, markers]) => !hasMarkers(clients[i], markers));
      while (missing().length) {
        if (Date.now() > deadline) {
          fail(`markers missing: ${JSON.stringify(missing().map(([i, m]) => [i, m, clients[i].events]))}`);
        }
        await sleep(10);
      }
      await sleep(300);
      const all = clients.map((c) => c.events.splice(0));
      console.log(`EVENTS ${JSON.stringify(all)}`);
      break;
    }
    case "close":
      c.socket.close();
      console.log(`CLOSED ${cmd.i}`);
      break;
    case "open":
      await connectOnShard(c);
      console.log(`OPENED ${cmd.i}`);
      break;
    case "quit":
      for (const c of clients) c.socket.close();
      console.log("PASS");
      process.exit(0);
      break;
    default:
      fail(`unknown command ${JSON.stringify(cmd)}`);
  }
}

async function main() {
  for (let i = 0; i < clients.length; i++) {
    const shard = await connectOnShard(clients[i]);
    console.log(`CLIENT ${i} ${shard}`);
  }
  console.log("READY");
  const rl = readline.createInterface({ input: process.stdin });
  const queue = [];
  let busy = false;
  rl.on("line", (line) => {
    queue.push(line);
    if (busy) return;
    busy = true;
    (async () => {
      while (queue.length) await command(JSON.parse(queue.shift()));
      busy = false;
    })().catch((e) => fail(e && e.stack ? e.stack : String(e)));
  });
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
