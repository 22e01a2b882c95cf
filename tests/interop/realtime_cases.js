// Runs refusal cases of shardcast's realtime wire contract with the real socket.io-client, one socket per case,
// for tests/realtime_e2e.rs. usage: node realtime_cases.js <4|2> <cases.json>
//
// cases.json: { "url", "cases": [{ "name", "connect_token"?: string, "emits": [[event, payload], ...], "until": event }] }
// For each case: connect (4.x: `connect_token` in the CONNECT auth payload), emit `emits` in order, record every
// contract event the server sends (and `disconnect` with its reason) until `until` is received, then print
// `CASE <name> <json array of [event, payload]>`. Prints `PASS` at the end; `FAIL <reason>` and exit 1 otherwise.
"use strict";

const fs = require("fs");

const [, , major, casesPath] = process.argv;
const io = require(major === "2" ? "sioc2" : "sioc4");
const v2 = major === "2";
const { url, cases } = JSON.parse(fs.readFileSync(casesPath, "utf8"));

const EVENTS = [
  "authenticated",
  "unauthorized",
  "realtime:join:success",
  "realtime:join:error",
  "realtime:leave:success",
  "realtime:leave:error",
  "realtime:resource",
];

function fail(msg) {
  console.log(`FAIL ${msg}`);
  process.exit(1);
}

function run(c) {
  return new Promise((resolve) => {
    const opts = { forceNew: true, reconnection: false, transports: ["websocket"] };
    if (c.connect_token !== undefined) {
      if (v2) fail("2.x has no CONNECT payload on the main namespace");
      opts.auth = { token: c.connect_token };
    }
    const socket = io(url, opts);
    const seen = [];
    let done = false;
    const record = (name, payload) => {
      if (done) return; // our own close below
      seen.push(payload === undefined ? [name] : [name, payload]);
      if (name === c.until) {
        done = true;
        socket.close();
        resolve(seen);
      }
    };
    for (const name of EVENTS) socket.on(name, (payload) => record(name, payload));
    socket.on("disconnect", (reason) => record("disconnect", reason));
    socket.on(v2 ? "error" : "connect_error", (e) => fail(`${c.name}: connect error ${e && e.message ? e.message : e}`));
    socket.on("connect", () => {
      for (const [name, payload] of c.emits) socket.emit(name, payload);
    });
  });
}

async function main() {
  for (const c of cases) {
    const seen = await run(c);
    console.log(`CASE ${c.name} ${JSON.stringify(seen)}`);
  }
  console.log("PASS");
  process.exit(0);
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
