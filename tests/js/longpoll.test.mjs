// phoenix.js with transport: LongPoll (Node's fetch) against a real Plexus server: the full
// join/push/broadcast/presence cycle, mixed with WebSocket clients, plus the protocol edges.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Socket, LongPoll, Presence } from "phoenix";
import WebSocket from "ws";
import { Server, token, until, sleep } from "./server.mjs";

let server, dir;
const sockets = [];

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "plexus-js-lp-"));
  const config = path.join(dir, "plexus.toml");
  writeFileSync(config, `
profile = "dev"
[limits]
longpoll_window_secs = 1
[[channels]]
topic = "room:*"
presence = true
history_size = 50
`);
  server = await Server.start({ PLEXUS_CONFIG: config });
});

after(async () => {
  sockets.forEach((s) => s.disconnect());
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
});

function connect(sub, transport) {
  const socket = new Socket(server.url, { transport, params: { token: token(sub) }, reconnectAfterMs: () => 100 });
  socket.connect();
  sockets.push(socket);
  return socket;
}

const join = (channel) => new Promise((resolve, reject) => {
  channel.join().receive("ok", resolve).receive("error", (r) => reject(new Error(JSON.stringify(r))));
});
const push = (channel, event, payload) => new Promise((resolve) => {
  channel.push(event, payload).receive("ok", (r) => resolve(["ok", r])).receive("error", (r) => resolve(["error", r]));
});

test("LongPoll: join, push with reply, broadcasts both ways with WebSocket clients, presence", async () => {
  const lpSocket = connect("polly", LongPoll);
  const lp = lpSocket.channel("room:lp");
  const ws = connect("wes", WebSocket).channel("room:lp");
  const presence = new Presence(lp);
  let present = [];
  presence.onSync(() => { present = presence.list((id) => id).sort(); });
  const wsPresence = new Presence(ws);
  let wsList = [];
  wsPresence.onSync(() => { wsList = wsPresence.list((id) => id).sort(); });
  await join(lp);
  await join(ws);
  assert.equal(lpSocket.transport, LongPoll);
  await until(() => present.length === 2, 5000, `presence ${JSON.stringify(present)}`);
  assert.deepEqual(present, ["polly", "wes"]);

  const fromLp = new Promise((resolve) => ws.on("new_msg", resolve));
  assert.deepEqual(await push(lp, "new_msg", { body: "from longpoll" }), ["ok", {}]);
  assert.deepEqual(await fromLp, { body: "from longpoll" });

  const fromWs = new Promise((resolve) => lp.on("new_msg", resolve));
  await push(ws, "new_msg", { body: "from websocket" });
  assert.deepEqual(await fromWs, { body: "from websocket" });

  const fromApi = new Promise((resolve) => lp.on("news", resolve));
  await server.broadcast("room:lp", "news", { n: 1 });
  assert.deepEqual(await fromApi, { n: 1 });

  // A binary push from LongPoll travels as a base64 line and reaches the WebSocket client as binary.
  const bin = new Promise((resolve) => ws.on("blob", resolve));
  assert.equal((await push(lp, "blob", new Uint8Array([1, 2, 3]).buffer))[0], "ok");
  assert.deepEqual(new Uint8Array(await bin), new Uint8Array([1, 2, 3]));

  // Denied joins answer as on WebSocket.
  const denied = lpSocket.channel("secret");
  const reason = await new Promise((resolve) => denied.join().receive("error", resolve));
  assert.deepEqual(reason, { reason: "unauthorized", retry: false });
  denied.leave();

  // Leaving: the WebSocket client sees the LongPoll user leave presence.
  assert.deepEqual(wsList, ["polly", "wes"]);
  await new Promise((resolve) => lp.leave().receive("ok", resolve));
  await until(() => wsList.length === 1 && wsList[0] === "wes", 5000, `ws presence ${JSON.stringify(wsList)}`);
});

test("LongPoll protocol edges: refused token, unknown session, 100-line limit, expiry", async () => {
  const base = `${server.http}/socket/longpoll`;
  let res = await fetch(`${base}?vsn=2.0.0&token=garbage`);
  assert.equal(res.status, 403);
  assert.deepEqual(await res.json(), { status: 403, error: "malformed token" });

  res = await fetch(`${base}?vsn=2.0.0&token=plp.unknown`, { method: "POST", body: "[]" });
  assert.deepEqual(await res.json(), { status: 410 });

  res = await fetch(`${base}?vsn=2.0.0&token=${token("edge")}`);
  const opened = await res.json();
  assert.equal(opened.status, 410);
  const session = opened.token;
  const lines = Array.from({ length: 101 }, (_, i) => JSON.stringify([null, String(i), "phoenix", "heartbeat", {}])).join("\n");
  res = await fetch(`${base}?vsn=2.0.0&token=${session}`, { method: "POST", body: lines });
  assert.equal(res.status, 413);
  assert.match((await res.json()).error, /at most 100/);
  // 100 lines are fine, and all get answered.
  const hundred = lines.split("\n").slice(0, 100).join("\n");
  res = await fetch(`${base}?vsn=2.0.0&token=${session}`, { method: "POST", body: hundred });
  assert.deepEqual(await res.json(), { status: 200 });
  res = await fetch(`${base}?vsn=2.0.0&token=${session}`);
  const polled = await res.json();
  assert.equal(polled.status, 200);
  assert.equal(polled.messages.length, 100);

  // No poll for two windows (2 x 1 s): the session is gone.
  await sleep(3500);
  res = await fetch(`${base}?vsn=2.0.0&token=${session}`, { method: "POST", body: "" });
  assert.deepEqual(await res.json(), { status: 410 });
});
