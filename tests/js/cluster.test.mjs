// Cluster mode with phoenix.js: three Plexus nodes on one Redis (both started here), clients on
// different nodes, and a drain behind a load balancer.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Socket, Presence, LongPoll } from "phoenix";
import WebSocket from "ws";
import { Server, Redis, balancer, token, until } from "./server.mjs";

let redis, dir, config;
const nodes = [];
const sockets = [];

before(async () => {
  redis = await Redis.start();
  dir = mkdtempSync(path.join(tmpdir(), "plexus-js-cluster-"));
  config = path.join(dir, "plexus.toml");
  writeFileSync(config, `
profile = "dev"
broker = "redis"
drain_timeout_secs = 5
[redis]
node_timeout_secs = 2
[limits]
max_connections_per_user = 2
[[channels]]
topic = "room:*"
presence = true
history_size = 100
`);
  for (let i = 0; i < 3; i++) nodes.push(await Server.start({ PLEXUS_CONFIG: config, PLEXUS_REDIS_URL: redis.url }));
});

after(async () => {
  sockets.forEach((s) => s.disconnect());
  for (const n of nodes) await n.stop();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
});

function connect(url, sub, opts = {}) {
  const socket = new Socket(url, { transport: WebSocket, params: { token: token(sub) }, reconnectAfterMs: () => 100, rejoinAfterMs: () => 100, ...opts });
  socket.connect();
  sockets.push(socket);
  return socket;
}
const join = (c) => new Promise((resolve, reject) => c.join().receive("ok", resolve).receive("error", (r) => reject(new Error(JSON.stringify(r)))));

test("a client on node A gets pushes from node B and the API of node C; presence spans nodes", async () => {
  const [A, B, C] = nodes;
  // `recover: null` asks for history offsets in the broadcasts' ref.
  const a = connect(A.url, "alice").channel("room:c1", { recover: null });
  const b = connect(B.url, "bob").channel("room:c1");
  const presence = new Presence(a);
  let present = [];
  presence.onSync(() => { present = presence.list((id) => id).sort(); });
  await join(a);
  await join(b);
  await until(() => present.length === 2, 5000, `presence ${JSON.stringify(present)}`);
  assert.deepEqual(present, ["alice", "bob"]);
  const fromB = new Promise((resolve) => a.on("new_msg", (p, ref) => resolve([p, ref])));
  b.push("new_msg", { body: "from B" });
  const [p, ref] = await fromB;
  assert.deepEqual(p, { body: "from B" });
  assert.equal(ref, "1", "the cluster-wide offset");
  const fromC = new Promise((resolve) => a.on("news", resolve));
  await C.broadcast("room:c1", "news", { from: "C" });
  assert.deepEqual(await fromC, { from: "C" });
});

test("the per-user connection limit counts every node", async () => {
  const [A, B, C] = nodes;
  const s1 = connect(A.url, "limited");
  const s2 = connect(B.url, "limited");
  await until(() => s1.isConnected() && s2.isConnected(), 5000, "two connections");
  const s3 = connect(C.url, "limited", { reconnectAfterMs: () => 60000 });
  let errored = false;
  s3.onError(() => { errored = true; });
  await until(() => errored, 5000, "third refused");
  assert.equal(s3.isConnected(), false);
  s3.disconnect();
});

test("drain behind a balancer: clients of the drained node move to the others and rejoin", async () => {
  const [A, B] = nodes;
  const lb = await balancer([A.port, B.port]);
  const url = `ws://127.0.0.1:${lb.port}/socket`;
  const channels = [];
  const closes = [];
  for (const sub of ["d1", "d2", "d3", "d4"]) {
    const s = connect(url, sub);
    s.onClose((e) => closes.push(e.code));
    const ch = s.channel("room:drain");
    channels.push(ch);
    await join(ch);
  }
  const watcher = connect(B.url, "watcher").channel("room:drain");
  const presence = new Presence(watcher);
  let present = [];
  presence.onSync(() => { present = presence.list((id) => id).sort(); });
  await join(watcher);
  await until(() => present.length === 5, 5000, `5 present, got ${JSON.stringify(present)}`);

  await A.stop(); // SIGTERM: drain
  assert.ok(closes.includes(1012), `expected close 1012, got ${JSON.stringify(closes)}`);
  await until(() => channels.every((c) => c.state === "joined"), 10000, "everyone rejoined");
  await until(() => present.length === 5, 10000, `5 present after the drain, got ${JSON.stringify(present)}`);
  const got = new Promise((resolve) => channels[0].on("after", resolve));
  await B.broadcast("room:drain", "after", { ok: true });
  assert.deepEqual(await got, { ok: true });
  lb.close();
});

test("LongPoll needs no sticky routing: a session held by one node is polled and posted through another", async () => {
  const [, B, C] = nodes;
  const lb = await balancer([B.port, C.port]);
  const lp = connect(`ws://127.0.0.1:${lb.port}/socket`, "polly", { transport: LongPoll }).channel("room:sticky");
  await join(lp);
  const other = connect(C.url, "wes").channel("room:sticky");
  await join(other);
  const got = new Promise((resolve) => lp.on("new_msg", resolve));
  other.push("new_msg", { body: "to the poller" });
  assert.deepEqual(await got, { body: "to the poller" });
  const back = new Promise((resolve) => other.on("new_msg", resolve));
  lp.push("new_msg", { body: "from the poller" });
  assert.deepEqual(await back, { body: "from the poller" });

  // A session opened on B, used only through C: C forwards to B over Redis.
  const opened = await (await fetch(`${B.http}/socket/longpoll?vsn=2.0.0&token=${token("stray")}`)).json();
  assert.equal(opened.status, 410);
  const q = `vsn=2.0.0&token=${opened.token}`;
  const post = await fetch(`${C.http}/socket/longpoll?${q}`, { method: "POST", body: '["1","1","room:fwd","phx_join",{}]' });
  assert.deepEqual(await post.json(), { status: 200 });
  const polled = await (await fetch(`${C.http}/socket/longpoll?${q}`)).json();
  assert.equal(polled.status, 200);
  const reply = JSON.parse(polled.messages[0]);
  assert.deepEqual([reply[1], reply[2], reply[3], reply[4].status], ["1", "room:fwd", "phx_reply", "ok"]);
  // A session of a node that does not exist: 410, and phoenix.js starts over.
  const ghost = await fetch(`${C.http}/socket/longpoll?vsn=2.0.0&token=plp.0123456789ab.AAAA`);
  assert.deepEqual(await ghost.json(), { status: 410 });
  lb.close();
});
