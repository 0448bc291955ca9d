// Pusher-format webhooks (PLEXUS_PUSHER_WEBHOOK_URL) checked with the `pusher` npm SDK's own
// verification (`pusher.webhook({headers, rawBody})`: `isValid()`, `getEvents()`), caused by
// pusher-js 8 clients: channel_occupied / channel_vacated, member_added / member_removed once
// per user, client_event (with user_id on presence channels), cache_miss. And cache channels
// as pusher-js sees them: `pusher:cache_miss` on the channel, else the last event right after
// subscribing (here one the SDK triggered).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { once } from "node:events";
import PusherServer from "pusher";
import { Server, PUSHER, PUSHER_ENV, until, sleep } from "./server.mjs";
import { pusherClient, connected, subscribed } from "./pusher_client.mjs";

let server;
let auth; // the application's auth endpoint
let hooks; // the application's webhook endpoint
const received = []; // {headers, rawBody} of each webhook request
let sdk;

function sign(socketId, channel) {
  return `${PUSHER.key}:${createHmac("sha256", PUSHER.secret).update(`${socketId}:${channel}`).digest("hex")}`;
}

before(async () => {
  hooks = createServer(async (req, res) => {
    let rawBody = "";
    for await (const chunk of req) rawBody += chunk;
    received.push({ headers: req.headers, rawBody });
    res.writeHead(200, { "content-type": "application/json" });
    res.end("{}");
  });
  hooks.listen(0, "127.0.0.1");
  await once(hooks, "listening");
  auth = createServer(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    const form = new URLSearchParams(body);
    const channel = form.get("channel_name");
    res.writeHead(200, { "content-type": "application/json" });
    if (channel.startsWith("presence-")) {
      const channelData = JSON.stringify({ user_id: form.get("user") });
      res.end(JSON.stringify({ auth: sign(form.get("socket_id"), `${channel}:${channelData}`), channel_data: channelData }));
      return;
    }
    res.end(JSON.stringify({ auth: sign(form.get("socket_id"), channel) }));
  });
  auth.listen(0, "127.0.0.1");
  await once(auth, "listening");
  server = await Server.start({
    ...PUSHER_ENV,
    PLEXUS_PUSHER_WEBHOOK_URL: `http://127.0.0.1:${hooks.address().port}/pusher/webhooks`,
  });
  sdk = new PusherServer({
    appId: PUSHER.appId, key: PUSHER.key, secret: PUSHER.secret,
    host: "127.0.0.1", port: String(server.port), useTLS: false,
  });
});

after(async () => {
  auth?.close();
  hooks?.close();
  await server?.stop();
});

const next = (channel, event) => new Promise((resolve) => {
  const handler = (data) => { channel.unbind(event, handler); resolve(data); };
  channel.bind(event, handler);
});

/** Every event received so far, each request verified by the SDK. */
function events() {
  const out = [];
  for (const r of received) {
    const hook = sdk.webhook(r);
    assert.equal(hook.isValid(), true, `invalid webhook: ${JSON.stringify(r)}`);
    assert.ok(Math.abs(hook.getTime().getTime() - Date.now()) < 60_000);
    out.push(...hook.getEvents());
  }
  return out;
}
const count = (name, channel, extra = {}) =>
  events().filter((e) => e.name === name && e.channel === channel &&
    Object.entries(extra).every(([k, v]) => e[k] === v)).length;

const client = (user = "someone") => pusherClient(server.port, `http://127.0.0.1:${auth.address().port}`, user);

test("the SDK verifies Plexus's webhooks, and refuses them with another secret", { timeout: 20_000 }, async () => {
  const p = client();
  try {
    await connected(p);
    await subscribed(p.subscribe("orders"));
    await until(() => count("channel_occupied", "orders") === 1, 5000, "channel_occupied");
    const r = received[0];
    assert.equal(r.headers["content-type"], "application/json");
    assert.equal(r.headers["x-pusher-key"], PUSHER.key);
    const other = new PusherServer({ appId: PUSHER.appId, key: PUSHER.key, secret: "another-secret-0123456789" });
    assert.equal(other.webhook(r).isValid(), false);
    const tampered = { headers: r.headers, rawBody: r.rawBody.replace("orders", "ordert") };
    assert.equal(sdk.webhook(tampered).isValid(), false);
  } finally {
    p.disconnect();
  }
  await until(() => count("channel_vacated", "orders") === 1, 5000, "channel_vacated");
  assert.equal(count("channel_occupied", "orders"), 1);
});

test("presence: one member_added per user, member_removed after its last connection; client events with user_id", { timeout: 20_000 }, async () => {
  const a1 = client("ann");
  const a2 = client("ann");
  const b = client("bob");
  const ch = "presence-team";
  try {
    await Promise.all([connected(a1), connected(a2), connected(b)]);
    const c1 = a1.subscribe(ch);
    await subscribed(c1);
    await subscribed(a2.subscribe(ch));
    const cb = b.subscribe(ch);
    await subscribed(cb);
    const bobId = b.connection.socket_id;
    const atAnn = next(c1, "client-hello");
    cb.trigger("client-hello", { from: "bob" });
    assert.deepEqual(await atAnn, { from: "bob" });
    await until(() => count("client_event", ch) === 1, 5000, "client_event");
    const e = events().find((e) => e.name === "client_event");
    assert.deepEqual(e, {
      name: "client_event", channel: ch, event: "client-hello",
      data: JSON.stringify({ from: "bob" }), socket_id: bobId, user_id: "bob",
    });
    await until(() => count("member_added", ch, { user_id: "ann" }) === 1 &&
      count("member_added", ch, { user_id: "bob" }) === 1, 5000, "member_added");
    a1.disconnect();
    await sleep(300);
    assert.equal(count("member_removed", ch, { user_id: "ann" }), 0, "ann still has a connection");
    a2.disconnect();
    await until(() => count("member_removed", ch, { user_id: "ann" }) === 1, 5000, "ann's member_removed");
    b.disconnect();
    await until(() => count("channel_vacated", ch) === 1, 5000, "channel_vacated");
    await sleep(300);
    assert.equal(count("member_added", ch, { user_id: "ann" }), 1);
    assert.equal(count("member_removed", ch, { user_id: "bob" }), 1);
    assert.equal(count("channel_occupied", ch), 1);
  } finally {
    a1.disconnect();
    a2.disconnect();
    b.disconnect();
  }
});

test("cache channels: pusher:cache_miss and its webhook, then the last event the SDK triggered", { timeout: 20_000 }, async () => {
  const a = client();
  const b = client();
  try {
    await Promise.all([connected(a), connected(b)]);
    const ca = a.subscribe("cache-scores");
    const miss = next(ca, "pusher:cache_miss");
    await subscribed(ca);
    await miss;
    await until(() => count("cache_miss", "cache-scores") === 1, 5000, "cache_miss webhook");
    await sdk.trigger("cache-scores", "score", { home: 1, away: 0 });
    await sdk.trigger("cache-scores", "score", { home: 2, away: 0 });
    const cb = b.subscribe("cache-scores");
    let missed = false;
    cb.bind("pusher:cache_miss", () => { missed = true; });
    const last = next(cb, "score");
    await subscribed(cb);
    assert.deepEqual(await last, { home: 2, away: 0 });
    await sleep(200);
    assert.equal(missed, false);
    assert.equal(count("cache_miss", "cache-scores"), 1);
    // A private cache channel needs its signature, as any private channel.
    const pc = b.subscribe("private-cache-x");
    const pmiss = next(pc, "pusher:cache_miss");
    await subscribed(pc);
    await pmiss;
  } finally {
    a.disconnect();
    b.disconnect();
  }
});
