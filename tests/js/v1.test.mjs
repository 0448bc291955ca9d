// Phoenix protocol V1 (JSON objects) with clients nobody here wrote: npm `phoenix-channels`
// 1.0.0 (speaks vsn 1.0.0 over the `websocket` package), and the official phoenix.js 1.8 told
// to use vsn 1.0.0 (WebSocket and LongPoll) — next to V2 clients in the same rooms.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { Socket, Presence } from "phoenix";
import WebSocket from "ws";
import { Server, token, until, join, push } from "./server.mjs";

const require = createRequire(import.meta.url);
const PC = require("phoenix-channels");

let server;
const sockets = [];
before(async () => { server = await Server.start(); });
after(async () => {
  sockets.forEach((s) => {
    s.disconnect();
    // phoenix-channels 1.0.0's disconnect() leaves its heartbeat interval and reconnect
    // timer running (they are cleared only when the socket closes by itself).
    if (s.heartbeatTimer) clearInterval(s.heartbeatTimer);
    s.reconnectTimer?.reset?.();
  });
  await server.stop();
});

// phoenix.js 1.8 in V1 mode: it sends `vsn=1.0.0` and takes encode/decode for the V1 objects.
// (Over LongPoll phoenix.js always uses its V2 serializer, whatever `vsn` says, so V1 LongPoll
// is tested at the HTTP level in tests/protocol_v1.rs.)
const v1 = {
  vsn: "1.0.0",
  encode: (msg, cb) => cb(JSON.stringify(msg)),
  decode: (raw, cb) => cb(JSON.parse(raw)),
};

function phoenixV1(sub, transport = WebSocket) {
  const socket = new Socket(server.url, {
    transport, ...v1, params: { token: token(sub) }, reconnectAfterMs: () => 100,
  });
  socket.connect();
  sockets.push(socket);
  return socket;
}

function phoenixV2(sub) {
  const socket = new Socket(server.url, { transport: WebSocket, params: { token: token(sub) } });
  socket.connect();
  sockets.push(socket);
  return socket;
}

function pcSocket(sub, params = {}) {
  const socket = new PC.Socket(server.url, { params: { token: token(sub), ...params } });
  socket.connect();
  sockets.push(socket);
  return socket;
}

test("phoenix-channels 1.0.0: join, push with reply, broadcasts from a V2 client and the API, presence, leave", async () => {
  const socket = pcSocket("pc-user");
  const ch = socket.channel("room:pc", {});
  const got = [];
  ch.on("msg", (p) => got.push(p));
  let state = {};
  ch.on("presence_state", (s) => { state = PC.Presence.syncState(state, s); });
  ch.on("presence_diff", (d) => { state = PC.Presence.syncDiff(state, d); });
  await join(ch);

  const other = phoenixV2("v2-user").channel("room:pc", {});
  await join(other);
  await until(() => state["pc-user"] && state["v2-user"], 3000, "presence of both");

  const seen = [];
  other.on("msg", (p) => seen.push(p));
  const r = await push(ch, "msg", { from: "pc" });
  assert.equal(r.status, "ok");
  await push(other, "msg", { from: "v2" });
  await server.broadcast("room:pc", "msg", { from: "api" });
  await until(() => got.length === 2, 3000, "two broadcasts");
  assert.deepEqual(got, [{ from: "v2" }, { from: "api" }]); // its own push is not echoed
  await until(() => seen.length === 2, 3000, "the V2 client hears the V1 one");
  assert.deepEqual(seen, [{ from: "pc" }, { from: "api" }]);

  // A refused join answers in V1 like in V2.
  const refused = socket.channel("admin:secret", {});
  await assert.rejects(join(refused), /join error/);
  // Leaving stops its rejoin timer (Phoenix, and Plexus, answer ok for a topic not joined).
  await new Promise((resolve) => refused.leave().receive("ok", resolve));

  let closed = false;
  ch.onClose(() => { closed = true; });
  await new Promise((resolve) => ch.leave().receive("ok", resolve));
  await until(() => closed, 3000, "phx_close after leave");
});

test("phoenix-channels 1.0.0: token refresh on topic phoenix", async () => {
  const socket = pcSocket("refresher");
  await until(() => socket.isConnected(), 3000, "connected");
  const replies = [];
  socket.onMessage((m) => { if (m.topic === "phoenix" && m.event === "phx_reply") replies.push(m); });
  socket.push({ topic: "phoenix", event: "refresh_token", payload: { token: token("refresher") }, ref: "r1" });
  socket.push({ topic: "phoenix", event: "refresh_token", payload: { token: token("someone-else") }, ref: "r2" });
  await until(() => replies.length === 2, 3000, "two refresh replies");
  assert.equal(replies.find((m) => m.ref === "r1").payload.status, "ok");
  const other = replies.find((m) => m.ref === "r2").payload;
  assert.equal(other.status, "error");
  assert.match(other.response.reason, /sub/);
});

for (const [name, transport] of [["WebSocket", WebSocket]]) {
  test(`phoenix.js 1.8 with vsn 1.0.0 over ${name}: join, push, broadcast, presence`, async () => {
    const sub = `v1-${name}`;
    const a = phoenixV1(sub, transport).channel("room:v1js", {});
    const presence = new Presence(a);
    let names = [];
    presence.onSync(() => { names = presence.list((id) => id).sort(); });
    const got = [];
    a.on("msg", (p, ref) => got.push([p, ref]));
    const reply = await join(a);
    assert.equal(typeof reply.epoch, "string", "the dev profile's room:* has history");
    const b = phoenixV2(`${sub}-peer`).channel("room:v1js", {});
    await join(b);
    const r = await push(a, "msg", { n: 1 });
    assert.equal(r.status, "ok");
    await push(b, "msg", { n: 2 });
    await server.broadcast("room:v1js", "msg", { n: 3 });
    await until(() => got.length === 2, 5000, `two broadcasts, got ${JSON.stringify(got)}`);
    // Phoenix's shape: no offset in ref for a join that did not ask.
    assert.deepEqual(got, [[{ n: 2 }, null], [{ n: 3 }, null]]);
    // Presence state and diffs, decoded from V1 objects by phoenix.js's Presence.
    await until(() => names.includes(sub) && names.includes(`${sub}-peer`), 3000, `presence, got ${names}`);
  });
}
