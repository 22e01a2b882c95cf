// socket.io 4.8 peer for shardcast's load tests: one Node process, the default in-memory adapter, and the same
// contract as shardcast (see loadtest/src/lib.rs): authenticate with an HS256 access token, realtime:join with a
// room token this server signs, realtime:resource on a REST-created resource, echo with an ack.
//
// Usage: node server.js --listen 127.0.0.1:3001 --jwt-secret SECRET [--socket-path /socket/]
"use strict";

const http = require("node:http");
const crypto = require("node:crypto");
const jwt = require("jsonwebtoken");
const { Server } = require("socket.io");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  return fallback;
}

const [host, port] = arg("listen", "127.0.0.1:3001").split(":");
const secret = arg("jwt-secret", process.env.SHARDCAST_JWT_SECRET || "");
const socketPath = arg("socket-path", "/socket/");
const authTimeoutMs = Number(arg("auth-timeout-ms", "10000"));
const roomTokenTtlS = 3600;
const bodyBytesMax = 1 << 20;
if (!secret) {
  console.error("--jwt-secret (or SHARDCAST_JWT_SECRET) is required");
  process.exit(2);
}

// The REST collection: /api/v1/channels/<channel>/messages; its Socket.IO room has the same path.
const COLLECTION = /^\/api\/v1\/channels\/([A-Za-z0-9_-]{1,64})\/messages$/;

function verifyAccess(token) {
  return jwt.verify(token, secret, { algorithms: ["HS256"] });
}

function roomToken(sub, room) {
  return jwt.sign({ sub, room }, secret, { algorithm: "HS256", expiresIn: roomTokenTtlS });
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

// noDelay: TCP_NODELAY on every accepted socket (Node's default since 18, set explicitly so the comparison does not
// depend on the Node version).
const httpServer = http.createServer({ noDelay: true }, (req, res) => {
  const url = new URL(req.url, "http://localhost");
  const m = COLLECTION.exec(url.pathname);
  if (!m) return send(res, 404, { error: "not found" });
  const auth = req.headers.authorization || "";
  let claims;
  try {
    claims = verifyAccess(auth.startsWith("Bearer ") ? auth.slice(7) : "");
  } catch (e) {
    return send(res, 401, { error: "invalid token" });
  }
  const room = `/channels/${m[1]}/messages`;
  if (req.method === "GET") {
    const body = { resources: [] };
    if (url.searchParams.get("websockets") === "true") {
      body.websockets = [{ room, token: roomToken(claims.sub, room) }];
    }
    return send(res, 200, body);
  }
  if (req.method !== "POST") return send(res, 405, { error: "method not allowed" });
  const chunks = [];
  let size = 0;
  req.on("data", (c) => {
    size += c.length;
    if (size > bodyBytesMax) {
      send(res, 413, { error: "body too large" });
      req.destroy();
    } else chunks.push(c);
  });
  req.on("end", () => {
    if (res.writableEnded) return;
    let input;
    try {
      input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch (e) {
      return send(res, 400, { error: "invalid JSON" });
    }
    if (!input || typeof input.resource !== "object" || input.resource === null) {
      return send(res, 400, { error: "expected {\"resource\": {...}}" });
    }
    const resource = { ...input.resource, id: crypto.randomUUID(), user_id: claims.sub };
    io.to(room).emit("realtime:resource", {
      action: "created",
      room,
      type: "message",
      path: `${room}/${resource.id}`,
      resource,
    });
    send(res, 201, { resource, websocket: { room, token: roomToken(claims.sub, room) } });
  });
});

const io = new Server(httpServer, { path: socketPath, serveClient: false });

io.on("connection", (socket) => {
  let user = null;
  const timer = setTimeout(() => {
    if (!user) socket.disconnect(true);
  }, authTimeoutMs);

  socket.on("authenticate", (data) => {
    try {
      const claims = verifyAccess(data && data.token ? String(data.token) : "");
      user = claims.sub;
      clearTimeout(timer);
      socket.emit("authenticated");
    } catch (e) {
      socket.emit("unauthorized", { err: e.message });
      socket.disconnect(true);
    }
  });

  socket.on("realtime:join", (data) => {
    if (!user) return socket.disconnect(true);
    const name = data && typeof data.name === "string" ? data.name : "";
    try {
      const claims = jwt.verify(String((data && data.token) || ""), secret, { algorithms: ["HS256"] });
      if (claims.room !== name || claims.sub !== user) throw new Error("token does not match room and user");
      socket.join(name);
      socket.emit("realtime:join:success", { name });
    } catch (e) {
      socket.emit("realtime:join:error", { name, error: e.message });
    }
  });

  socket.on("realtime:leave", (data) => {
    if (!user) return socket.disconnect(true);
    const name = data && typeof data.name === "string" ? data.name : "";
    socket.leave(name);
    socket.emit("realtime:leave:success", { name });
  });

  socket.on("echo", (arg, ack) => {
    if (!user) return socket.disconnect(true);
    if (typeof ack === "function") ack(arg);
  });

  socket.on("disconnect", () => clearTimeout(timer));
});

// --redis-url redis://host:port: join a cluster through @socket.io/redis-adapter 8 (the classic protocol), as the
// cluster scenario's peer (two of these processes and one Redis).
const redisUrl = arg("redis-url", "");

async function listen() {
  if (redisUrl) {
    const { createAdapter } = require("@socket.io/redis-adapter");
    const { createClient } = require("redis");
    const pub = createClient({ url: redisUrl });
    const sub = pub.duplicate();
    for (const c of [pub, sub]) c.on("error", (e) => console.error(`redis: ${e.message}`));
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  httpServer.listen(Number(port), host, () => {
    const cluster = redisUrl ? " (redis adapter)" : "";
    console.log(`socket.io ${require("socket.io/package.json").version} peer listening on ${host}:${port}${socketPath}${cluster}`);
  });
}

listen().catch((e) => {
  console.error(`cannot start: ${e.message}`);
  process.exit(1);
});

process.on("SIGTERM", () => {
  io.close();
  process.exit(0);
});
