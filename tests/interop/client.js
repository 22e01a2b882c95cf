// Drives the real socket.io-client against a running shardcast conformance server.
// usage: node client.js <4|2> <scenario> <url>
// Prints "PASS <scenario>" and exits 0, or prints the failure and exits 1. Run by tests/interop.rs.
"use strict";

const [, , major, scenario, url] = process.argv;
const io = require(major === "2" ? "sioc2" : "sioc4");
const v2 = major === "2";

function fail(msg) {
  console.log(`FAIL ${scenario}: ${msg}`);
  process.exit(1);
}
function check(cond, msg) {
  if (!cond) fail(msg);
}
function eq(a, b, msg) {
  const ja = JSON.stringify(a, bufReplacer);
  const jb = JSON.stringify(b, bufReplacer);
  if (ja !== jb) fail(`${msg}: got ${ja}, expected ${jb}`);
}
function bufReplacer(_k, v) {
  if (v && v.type === "Buffer" && Array.isArray(v.data)) return { buf: v.data };
  if (v instanceof ArrayBuffer) return { buf: Array.from(new Uint8Array(v)) };
  return v;
}
function toBuf(x) {
  if (Buffer.isBuffer(x)) return x;
  if (x instanceof ArrayBuffer) return Buffer.from(x);
  if (ArrayBuffer.isView(x)) return Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  return x;
}
function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}
function pass() {
  console.log(`PASS ${scenario}`);
  process.exit(0);
}
function connect(nsp, opts) {
  const base = Object.assign({ forceNew: true, reconnection: false }, opts || {});
  return io(url + (nsp || ""), base);
}
async function connected(socket) {
  if (socket.connected) return;
  const [err] = await Promise.race([once(socket, "connect").then(() => [null]), once(socket, v2 ? "error" : "connect_error")]);
  if (err) fail(`connect failed: ${err && err.message ? err.message : err}`);
}
function emitAck(socket, ...args) {
  return new Promise((resolve) => socket.emit(...args, (...reply) => resolve(reply)));
}

const scenarios = {
  // Starts on long-polling, then upgrades to websocket.
  async "polling-upgrade"() {
    const socket = connect("", { transports: ["polling", "websocket"] });
    await connected(socket);
    const engine = v2 ? socket.io.engine : socket.io.engine;
    check(engine.transport.name === "polling" || engine.transport.name === "websocket", "unknown transport");
    if (engine.transport.name === "polling") await once(engine, "upgrade");
    check(engine.transport.name === "websocket", `not upgraded: ${engine.transport.name}`);
    const back = once(socket, "message-back");
    socket.emit("message", "after upgrade", 42);
    eq(await back, ["after upgrade", 42], "message-back after upgrade");
    socket.close();
    pass();
  },
  async "websocket-only"() {
    const socket = connect("", { transports: ["websocket"] });
    await connected(socket);
    check(socket.io.engine.transport.name === "websocket", "transport");
    const back = once(socket, "message-back");
    socket.emit("message", "ws");
    eq(await back, ["ws"], "message-back");
    socket.close();
    pass();
  },
  async "polling-only"() {
    const socket = connect("", { transports: ["polling"] });
    await connected(socket);
    for (let i = 0; i < 20; i++) {
      const back = once(socket, "message-back");
      socket.emit("message", i);
      eq(await back, [i], "message-back");
    }
    const reply = await emitAck(socket, "message-with-ack", "p", 1);
    eq(reply, ["p", 1], "ack over polling");
    const bin = once(socket, "message-back");
    socket.emit("message", Buffer.from([0, 1, 255]), "x");
    const got = await bin;
    eq(Array.from(toBuf(got[0])), [0, 1, 255], "binary over polling");
    eq(got[1], "x", "text after binary over polling");
    check(socket.io.engine.transport.name === "polling", "still on polling");
    socket.close();
    pass();
  },
  // Events and acks in both directions.
  async "events-acks"() {
    const socket = connect("", {});
    await connected(socket);
    const back = once(socket, "message-back");
    socket.emit("message", 1, "2", { 3: [true] });
    eq(await back, [1, "2", { 3: [true] }], "message-back");
    const reply = await emitAck(socket, "message-with-ack", 1, "2", { 3: [false] });
    eq(reply, [1, "2", { 3: [false] }], "ack");
    // server -> client emit with ack: the server asks, we answer, it reports what it got
    socket.on("question", (q, ack) => ack(`answer to ${q}`, 7));
    const answer = once(socket, "answer");
    socket.emit("ask-client", "life");
    eq(await answer, [["answer to life", 7]], "server received our ack");
    socket.close();
    pass();
  },
  async binary() {
    const socket = connect("", {});
    await connected(socket);
    const back = once(socket, "message-back");
    socket.emit("message", Buffer.from([1, 2, 3]), { nested: Buffer.from([4, 5]) }, "text");
    const got = await back;
    eq(Array.from(toBuf(got[0])), [1, 2, 3], "first buffer");
    eq(Array.from(toBuf(got[1].nested)), [4, 5], "nested buffer");
    eq(got[2], "text", "text arg");
    const reply = await emitAck(socket, "message-with-ack", Buffer.from([9, 8, 7]));
    eq(Array.from(toBuf(reply[0])), [9, 8, 7], "binary ack");
    // server -> client binary with ack
    socket.on("question", (q, ack) => ack(Buffer.from([6, 6])));
    const answer = once(socket, "answer");
    socket.emit("ask-client", "bin");
    const a = await answer;
    eq(Array.from(toBuf(a[0][0])), [6, 6], "server received our binary ack");
    socket.close();
    pass();
  },
  async "namespaces-auth"() {
    let custom;
    if (v2) {
      custom = connect("/custom", { query: { token: "abc" } });
    } else {
      custom = connect("/custom", { auth: { token: "abc" } });
    }
    const auth = once(custom, "auth");
    await connected(custom);
    const [payload] = await auth;
    if (v2) {
      check(typeof payload.query === "string" && payload.query.includes("token=abc"), `auth ${JSON.stringify(payload)}`);
    } else {
      eq(payload, { token: "abc" }, "auth payload");
    }
    const back = once(custom, "message-back");
    custom.emit("message", "on custom");
    eq(await back, ["on custom"], "custom namespace event");
    custom.close();
    const random = connect("/random", {});
    const [err] = await once(random, v2 ? "error" : "connect_error");
    const msg = typeof err === "string" ? err : err.message;
    check(msg === "Invalid namespace", `unknown namespace error: ${JSON.stringify(err)}`);
    random.close();
    pass();
  },
  async "server-disconnect"() {
    const socket = connect("", {});
    await connected(socket);
    const gone = once(socket, "disconnect");
    socket.emit("disconnect-me");
    const [reason] = await gone;
    check(reason === "io server disconnect", `reason ${reason}`);
    pass();
  },
  // Prints CONNECTED, waits for the test to restart the server, reconnects by itself and exchanges an event.
  async restart() {
    const socket = io(url, {
      forceNew: true,
      reconnection: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 300,
      randomizationFactor: 0,
      transports: ["websocket"],
    });
    await connected(socket);
    const firstId = socket.id;
    const disconnected = once(socket, "disconnect");
    console.log("CONNECTED");
    const [reason] = await disconnected;
    check(reason === "transport close" || reason === "transport error", `disconnect reason ${reason}`);
    console.log("DISCONNECTED");
    await once(socket, "connect");
    check(socket.id !== firstId, "new session after restart");
    const back = once(socket, "message-back");
    socket.emit("message", "after restart");
    eq(await back, ["after restart"], "message-back after restart");
    socket.close();
    pass();
  },
};

const run = scenarios[scenario];
if (!run) fail("unknown scenario");
run().catch((e) => fail(e && e.stack ? e.stack : String(e)));
