// Pusher's HTTP API through the official `pusher` server SDK (npm pusher 5.3.4, unmodified)
// against a real Plexus server in Pusher mode; what it publishes reaches the official phoenix
// client (npm phoenix) joined to the topic of the same name.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import Pusher from "pusher";
import { Socket, Presence } from "phoenix";
import WebSocket from "ws";
import { Server, PUSHER, PUSHER_ENV, token, join, until } from "./server.mjs";

let server;
let dir;
const sockets = [];

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "plexus-pusher-api-"));
  const config = path.join(dir, "plexus.toml");
  // Phoenix clients may join the Pusher-named topics of these tests; presence- ones track presence.
  writeFileSync(config, `
[[channels]]
topic = "presence-*"
presence = true

[[channels]]
topic = "news-*"
`);
  server = await Server.start({ ...PUSHER_ENV, PLEXUS_CONFIG: config });
});

after(async () => {
  sockets.forEach((s) => s.disconnect());
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
});

function sdk(overrides = {}) {
  return new Pusher({
    appId: PUSHER.appId,
    key: PUSHER.key,
    secret: PUSHER.secret,
    host: "127.0.0.1",
    port: String(server.port),
    useTLS: false,
    ...overrides,
  });
}

function connect(sub, socketOpts = {}) {
  const socket = new Socket(server.url, {
    transport: WebSocket,
    params: { token: token(sub) },
    reconnectAfterMs: () => 60_000,
    rejoinAfterMs: () => 60_000,
    ...socketOpts,
  });
  socket.connect();
  sockets.push(socket);
  return socket;
}

async function joined(sub, topic) {
  const channel = connect(sub).channel(topic, {});
  await join(channel);
  return channel;
}

/** Joins with a phoenix.js Presence on the channel (made before the join, as phoenix.js wants). */
async function joinedWithPresence(sub, topic) {
  const channel = connect(sub).channel(topic, {});
  const presence = new Presence(channel);
  await join(channel);
  return presence;
}

/** Collects every `event` received on `channel`. */
function collect(channel, event) {
  const got = [];
  channel.on(event, (payload) => got.push(payload));
  return got;
}

async function status(promise) {
  try {
    await promise;
    return 200;
  } catch (e) {
    return e.status;
  }
}

test("trigger to one channel reaches a phoenix client; data JSON is delivered as its value", async () => {
  const ch = await joined("alice", "news-one");
  const got = collect(ch, "headline");
  const res = await sdk().trigger("news-one", "headline", { title: "Plexus speaks Pusher" });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
  await until(() => got.length === 1, 5000, "the headline");
  assert.deepEqual(got[0], { title: "Plexus speaks Pusher" });
  // A string that is not JSON arrives as that string.
  await sdk().trigger("news-one", "headline", "just text");
  await until(() => got.length === 2, 5000, "the text headline");
  assert.equal(got[1], "just text");
});

test("trigger to several channels reaches each", async () => {
  const a = await joined("alice", "news-a");
  const b = await joined("bob", "news-b");
  const gotA = collect(a, "tick");
  const gotB = collect(b, "tick");
  const res = await sdk().trigger(["news-a", "news-b", "news-nobody"], "tick", { n: 1 }, { info: "subscription_count" });
  // `info` (passed in the SDK's params) asks for each channel's count in the answer.
  assert.deepEqual(await res.json(), {
    channels: {
      "news-a": { subscription_count: 1 },
      "news-b": { subscription_count: 1 },
      "news-nobody": { subscription_count: 0 },
    },
  });
  await until(() => gotA.length === 1 && gotB.length === 1, 5000, "both ticks");
  assert.deepEqual(gotA[0], { n: 1 });
  assert.deepEqual(gotB[0], { n: 1 });
});

test("triggerBatch publishes each event to its channel", async () => {
  const a = await joined("alice", "news-batch-a");
  const b = await joined("bob", "news-batch-b");
  const gotA = collect(a, "one");
  const gotB = collect(b, "two");
  const res = await sdk().triggerBatch([
    { channel: "news-batch-a", name: "one", data: { i: 1 } },
    { channel: "news-batch-b", name: "two", data: "plain" },
  ]);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
  await until(() => gotA.length === 1 && gotB.length === 1, 5000, "both batch events");
  assert.deepEqual(gotA[0], { i: 1 });
  assert.equal(gotB[0], "plain");
});

test("GET /channels lists occupied channels, user_count for presence- channels", async () => {
  await joined("carol", "news-listed");
  const presence = await joinedWithPresence("dave", "presence-lobby");
  await joined("erin", "presence-lobby");
  await joined("erin", "presence-lobby"); // a second connection of the same user: one user
  await until(() => presence.list().length === 2, 5000, "both users present");

  const res = await sdk().get({ path: "/channels" });
  assert.equal(res.status, 200);
  const all = await res.json();
  assert.ok(all.channels["news-listed"], JSON.stringify(all));
  assert.deepEqual(all.channels["news-listed"], {});
  assert.ok(all.channels["presence-lobby"], JSON.stringify(all));

  const filtered = await (await sdk().get({
    path: "/channels",
    params: { filter_by_prefix: "presence-", info: "user_count" },
  })).json();
  assert.deepEqual(filtered, { channels: { "presence-lobby": { user_count: 2 } } });

  // user_count without the presence- prefix is refused, as Pusher refuses it.
  assert.equal(await status(sdk().get({ path: "/channels", params: { info: "user_count" } })), 400);
});

test("GET /channels/{name}: occupied, subscription_count, user_count; /users lists presence members", async () => {
  const presence = await joinedWithPresence("frank", "presence-info");
  await joined("grace", "presence-info");
  await until(() => presence.list().length === 2, 5000, "both users present");

  const info = await (await sdk().get({
    path: "/channels/presence-info",
    params: { info: "subscription_count,user_count" },
  })).json();
  assert.deepEqual(info, { occupied: true, subscription_count: 2, user_count: 2 });

  const empty = await (await sdk().get({ path: "/channels/news-empty" })).json();
  assert.deepEqual(empty, { occupied: false });

  const users = await (await sdk().get({ path: "/channels/presence-info/users" })).json();
  assert.deepEqual(users, { users: [{ id: "frank" }, { id: "grace" }] });

  // users of a non-presence channel, user_count of a public one: 400 as Pusher.
  assert.equal(await status(sdk().get({ path: "/channels/news-empty/users" })), 400);
  assert.equal(await status(sdk().get({ path: "/channels/news-empty", params: { info: "user_count" } })), 400);
});

test("terminateUserConnections closes every connection of that user", async () => {
  const s1 = connect("mallory");
  const s2 = connect("mallory");
  const other = connect("oscar");
  const closed = (s) => new Promise((resolve) => s.onClose((e) => resolve(e.code)));
  const c1 = closed(s1);
  const c2 = closed(s2);
  let otherClosed = false;
  other.onClose(() => { otherClosed = true; });
  await join(s1.channel("news-t", {}));
  await join(s2.channel("news-t", {}));
  const o = other.channel("news-t", {});
  await join(o);

  const res = await sdk().terminateUserConnections("mallory");
  assert.equal(res.status, 200);
  assert.deepEqual(await Promise.all([c1, c2]), [1001, 1001]);
  // Another user stays connected: an event still reaches them.
  const got = collect(o, "still");
  await sdk().trigger("news-t", "still", { here: true });
  await until(() => got.length === 1, 5000, "the event to the remaining user");
  assert.equal(otherClosed, false);
});

test("a wrong secret is refused with 401 and publishes nothing", async () => {
  const ch = await joined("alice", "news-forged");
  const got = collect(ch, "forged");
  const wrong = sdk({ secret: "not-the-secret-0123456789" });
  assert.equal(await status(wrong.trigger("news-forged", "forged", {})), 401);
  assert.equal(await status(wrong.get({ path: "/channels" })), 401);
  assert.equal(await status(wrong.terminateUserConnections("alice")), 401);
  // A wrong key too; another app id is 404.
  assert.equal(await status(sdk({ key: "other-key" }).trigger("news-forged", "forged", {})), 401);
  assert.equal(await status(sdk({ appId: "999" }).trigger("news-forged", "forged", {})), 404);
  // The channel is still served: a good event arrives, and it is the only one.
  await sdk().trigger("news-forged", "forged", { good: true });
  await until(() => got.length === 1, 5000, "the signed event");
  assert.deepEqual(got, [{ good: true }]);
});

test("a stale timestamp (a clock 700 s behind) is refused with 401", async () => {
  const realNow = Date.now;
  Date.now = () => realNow() - 700_000;
  let st;
  try {
    st = await status(sdk().trigger("news-stale", "e", {}));
  } finally {
    Date.now = realNow;
  }
  assert.equal(st, 401);
  // Within 600 s (a clock 500 s ahead) is accepted.
  Date.now = () => realNow() + 500_000;
  try {
    st = await status(sdk().trigger("news-stale", "e", {}));
  } finally {
    Date.now = realNow;
  }
  assert.equal(st, 200);
});

test("Pusher's limits: 413 for data over 10 KiB (the SDK surfaces the status)", async () => {
  assert.equal(await status(sdk().trigger("news-big", "e", "x".repeat(10 * 1024 + 1))), 413);
  assert.equal(await status(sdk().trigger("news-big", "e", "x".repeat(10 * 1024))), 200);
});
