// The Node side of tests/cluster.rs: a real socket.io 4.8 server with @socket.io/redis-adapter 8 (node-redis 4),
// the real @socket.io/redis-emitter 5, and real socket.io-client 4.x clients (to this server or to shardcast
// nodes). Driven by JSON lines on stdin ({id, cmd, ...}); answers {id, ok, ...} and reports every event a client
// receives as {ev: "recv", client, event, args} on stdout. Binary arguments are reported as {"$bin": hex}.
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");
const { io: connect } = require("sioc4");
const readline = require("readline");

const redisUrl = process.argv[2];
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const show = (v) => {
  if (Buffer.isBuffer(v) || v instanceof ArrayBuffer || ArrayBuffer.isView(v)) {
    return { $bin: Buffer.from(v instanceof ArrayBuffer ? new Uint8Array(v) : v).toString("hex") };
  }
  if (Array.isArray(v)) return v.map(show);
  if (v && typeof v === "object") {
    const o = {};
    for (const k of Object.keys(v)) o[k] = show(v[k]);
    return o;
  }
  return v;
};
const revive = (v) => {
  if (Array.isArray(v)) return v.map(revive);
  if (v && typeof v === "object") {
    if (typeof v.$bin === "string") return Buffer.from(v.$bin, "hex");
    if (typeof v.$date === "number") return new Date(v.$date);
    const o = {};
    for (const k of Object.keys(v)) o[k] = revive(v[k]);
    return o;
  }
  return v;
};

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  const raw = pub.duplicate();
  for (const c of [pub, sub, raw]) c.on("error", () => {});
  await Promise.all([pub.connect(), sub.connect(), raw.connect()]);
  const server = http.createServer();
  const io = new Server(server, { adapter: createAdapter(pub, sub, { requestsTimeout: 3000 }) });
  const emitter = new Emitter(raw);
  io.on("connection", (socket) => {
    // How a Node server takes part in shardcast's presence across nodes: the user in socket.data.user.id and the
    // socket in the room "user:<id>".
    const user = socket.handshake.auth && socket.handshake.auth.user;
    if (typeof user === "string") {
      socket.data.user = { id: user };
      socket.join("user:" + user);
    }
    socket.on("join", (room, cb) => {
      socket.join(room);
      if (cb) cb("joined");
    });
  });
  io.on("test:ping", (arg, cb) => cb({ from: "node", arg }));
  io.on("test:note", (...args) => out({ ev: "serverSide", event: "test:note", args: show(args) }));
  await new Promise((r) => server.listen(0, "127.0.0.1", r));

  const clients = new Map();
  const handlers = {
    async client(m) {
      const auth = m.token ? { token: m.token } : m.user ? { user: m.user } : undefined;
      const c = connect(m.url, { transports: ["websocket"], auth, reconnection: false });
      clients.set(m.name, c);
      c.onAny((event, ...args) => out({ ev: "recv", client: m.name, event, args: show(args) }));
      c.on("ask", (arg, cb) => cb({ from: m.name, arg }));
      c.on("disconnect", (reason) => out({ ev: "disconnect", client: m.name, reason }));
      const authenticated = new Promise((resolve) => c.once("authenticated", resolve));
      await new Promise((resolve, reject) => {
        c.once("connect", resolve);
        c.once("connect_error", reject);
      });
      if (m.token) {
        await authenticated;
      }
      return { sid: c.id };
    },
    async clientEmit(m) {
      const c = clients.get(m.name);
      const reply = await c.timeout(5000).emitWithAck(m.event, ...revive(m.args));
      return { reply: show(reply) };
    },
    async close(m) {
      const c = clients.get(m.name);
      const gone = new Promise((resolve) => c.once("disconnect", resolve));
      c.disconnect();
      await gone;
      return {};
    },
    async clientSend(m) {
      clients.get(m.name).emit(m.event, ...revive(m.args));
      return {};
    },
    async emit(m) {
      let op = io;
      if (m.rooms && m.rooms.length) op = op.to(m.rooms);
      if (m.except && m.except.length) op = op.except(m.except);
      op.emit(m.event, ...revive(m.args));
      return {};
    },
    async emitWithAck(m) {
      let op = io.timeout(m.timeout || 3000);
      if (m.rooms && m.rooms.length) op = op.to(m.rooms);
      const responses = await op.emitWithAck(m.event, ...revive(m.args));
      return { responses: show(responses) };
    },
    async emitter(m) {
      let op = emitter;
      if (m.rooms && m.rooms.length) op = op.to(m.rooms);
      if (m.except && m.except.length) op = op.except(m.except);
      op.emit(m.event, ...revive(m.args));
      return {};
    },
    async socketsJoin(m) {
      (m.in && m.in.length ? io.in(m.in) : io).socketsJoin(m.rooms);
      return {};
    },
    async socketsLeave(m) {
      (m.in && m.in.length ? io.in(m.in) : io).socketsLeave(m.rooms);
      return {};
    },
    async disconnectSockets(m) {
      (m.in && m.in.length ? io.in(m.in) : io).disconnectSockets(!!m.close);
      return {};
    },
    async fetchSockets(m) {
      const sockets = await (m.in && m.in.length ? io.in(m.in) : io).fetchSockets();
      return { sockets: sockets.map((s) => ({ id: s.id, rooms: [...s.rooms], data: s.data })) };
    },
    async allRooms() {
      const rooms = await io.of("/").adapter.allRooms();
      return { rooms: [...rooms] };
    },
    async serverSideEmitWithAck(m) {
      const responses = await io.serverSideEmitWithAck(m.event, ...revive(m.args || []));
      return { responses: show(responses) };
    },
    async serverCount() {
      return { count: await io.of("/").adapter.serverCount() };
    },
  };

  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", async (line) => {
    let m;
    try {
      m = JSON.parse(line);
    } catch (e) {
      return out({ ok: false, error: "bad line" });
    }
    try {
      const r = await handlers[m.cmd](m);
      out({ id: m.id, ok: true, ...r });
    } catch (e) {
      out({ id: m.id, ok: false, error: String(e && e.message ? e.message : e) });
    }
  });
  rl.on("close", () => process.exit(0));
  out({ ready: true, port: server.address().port });
}

main().catch((e) => {
  out({ ready: false, error: String(e) });
  process.exit(1);
});
