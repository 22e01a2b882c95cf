// Cross-node delivery latency of a shardcast cluster, bounded and sequential (not a load test): one client on node A,
// one on node B, both in one channel's room; N REST creates on node A, each waiting until both clients saw it.
// Prints p50/p90/p99/max of the time from sending the POST to each client's receipt, local (A) and cross-node (B).
//
//   NODE_PATH=tests/interop/node_modules node loadtest/cluster/latency.js http://127.0.0.1:3001 http://127.0.0.1:3002 200
//
// Both nodes: the same SHARDCAST_JWT_SECRET (read here too) and room-token secret, the same cluster.redis_url.
"use strict";
const crypto = require("crypto");
const http = require("http");
const { io } = require("sioc4");

const [urlA, urlB, nArg] = process.argv.slice(2);
const N = Math.min(parseInt(nArg || "200", 10), 10000);
const secret = process.env.SHARDCAST_JWT_SECRET;
if (!urlA || !urlB || !secret) {
  console.error("usage: SHARDCAST_JWT_SECRET=... node latency.js <urlA> <urlB> [n]");
  process.exit(2);
}
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const now = Math.floor(Date.now() / 1000);
const head = b64({ alg: "HS256", typ: "JWT" });
const body = b64({ sub: "lat", exp: now + 3600, companies: ["lat"] });
const sig = crypto.createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
const token = `${head}.${body}.${sig}`;
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function call(base, method, path, payload) {
  return new Promise((resolve, reject) => {
    const data = payload ? JSON.stringify(payload) : "";
    const req = http.request(
      base + path,
      { method, agent, headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "content-length": Buffer.byteLength(data) } },
      (res) => {
        let text = "";
        res.on("data", (c) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode, body: text ? JSON.parse(text) : null }));
      }
    );
    req.on("error", reject);
    req.end(data);
  });
}

function client(url, room, roomToken) {
  return new Promise((resolve, reject) => {
    const c = io(url, { transports: ["websocket"], auth: { token }, reconnection: false });
    c.on("connect_error", reject);
    c.on("realtime:join:success", () => resolve(c));
    c.on("authenticated", () => c.emit("realtime:join", { name: room, token: roomToken }));
  });
}

const pct = (xs, p) => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
const fmt = (xs) => {
  xs.sort((a, b) => a - b);
  return `p50 ${pct(xs, 50).toFixed(2)} ms, p90 ${pct(xs, 90).toFixed(2)} ms, p99 ${pct(xs, 99).toFixed(2)} ms, max ${xs[xs.length - 1].toFixed(2)} ms`;
};

async function main() {
  const channel = `lat-${crypto.randomBytes(4).toString("hex")}`;
  const created = await call(urlA, "POST", "/api/v1/companies/lat/workspaces/lat/channels", { resource: { id: channel, name: channel } });
  if (created.status !== 201) throw new Error(`create channel: ${created.status}`);
  const list = await call(urlA, "GET", `/api/v1/channels/${channel}/messages?websockets=true`);
  const { room, token: roomToken } = list.body.websockets[0];
  const [ca, cb] = await Promise.all([client(urlA, room, roomToken), client(urlB, room, roomToken)]);
  const local = [];
  const remote = [];
  let missed = 0;
  for (let i = 0; i < N; i++) {
    const text = `m${i}`;
    const t0 = process.hrtime.bigint();
    const seen = (c, out) =>
      new Promise((resolve) => {
        const timer = setTimeout(() => {
          missed++;
          c.off("realtime:resource", on);
          resolve();
        }, 5000);
        const on = (ev) => {
          if (ev.resource && ev.resource.text === text) {
            out.push(Number(process.hrtime.bigint() - t0) / 1e6);
            clearTimeout(timer);
            c.off("realtime:resource", on);
            resolve();
          }
        };
        c.on("realtime:resource", on);
      });
    const both = Promise.all([seen(ca, local), seen(cb, remote)]);
    const r = await call(urlA, "POST", `/api/v1/channels/${channel}/messages`, { resource: { text } });
    if (r.status !== 201) throw new Error(`post: ${r.status}`);
    await both;
  }
  console.log(`${N} creates on node A; missed ${missed}`);
  console.log(`client on node A (local):      ${fmt(local)}`);
  console.log(`client on node B (via Redis):  ${fmt(remote)}`);
  ca.close();
  cb.close();
  agent.destroy();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
