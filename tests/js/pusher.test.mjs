// pusher-js 8.x (npm, node build, its `ws` transport) against Plexus in Pusher mode
// (`/app/{key}`): connect, public channels fed by the HTTP API and by phoenix.js, private
// channels authorised through an auth endpoint signing as Pusher's docs say, a wrong signature
// refused, client events between pusher-js clients and to phoenix.js. Partial Pusher support:
// see docs/pusher.md.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { once } from "node:events";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import Pusher from "pusher-js";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { Server, PUSHER, PUSHER_ENV, token, join, push } from "./server.mjs";
import { pusherClient, connected, subscribed } from "./pusher_client.mjs";

let server;
let auth; // the application's auth endpoint
let dir;
let signWith = PUSHER.secret;

/** Pusher's channel authorisation: key:hex(HMAC-SHA256(secret, "socket_id:channel")). */
function sign(secret, socketId, channel) {
  return `${PUSHER.key}:${createHmac("sha256", secret).update(`${socketId}:${channel}`).digest("hex")}`;
}

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "plexus-pusher-"));
  const config = path.join(dir, "plexus.toml");
  // A rule shared with phoenix.js clients (which need one in any profile).
  writeFileSync(config, '[[channels]]\ntopic = "private-room-*"\n\n[[channels]]\ntopic = "feed"\n');
  server = await Server.start({ ...PUSHER_ENV, PLEXUS_CONFIG: config });
  // pusher-js POSTs socket_id and channel_name (form-encoded) and expects {"auth"}.
  auth = createServer(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    const form = new URLSearchParams(body);
    const channel = form.get("channel_name");
    res.writeHead(200, { "content-type": "application/json" });
    if (channel.startsWith("presence-")) {
      // Presence: the signature covers socket_id:channel:channel_data.
      const channelData = JSON.stringify({ user_id: form.get("user"), user_info: { name: form.get("user").toUpperCase() } });
      const signature = sign(signWith, form.get("socket_id"), `${channel}:${channelData}`);
      res.end(JSON.stringify({ auth: signature, channel_data: channelData }));
      return;
    }
    const signature = sign(signWith, form.get("socket_id"), channel);
    res.end(JSON.stringify({ auth: signature }));
  });
  auth.listen(0, "127.0.0.1");
  await once(auth, "listening");
});

after(async () => {
  auth?.close();
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const next = (channel, event) => new Promise((resolve) => {
  const handler = (data) => { channel.unbind(event, handler); resolve(data); };
  channel.bind(event, handler);
});

const client = (user = "someone") => pusherClient(server.port, `http://127.0.0.1:${auth.address().port}`, user);

test("pusher-js connects and a public channel receives API broadcasts", async () => {
  const p = client();
  try {
    const socketId = await connected(p);
    assert.match(socketId, /^\d+\.\d+$/);
    const ch = p.subscribe("news");
    await subscribed(ch);
    const got = next(ch, "headline");
    await server.broadcast("news", "headline", { title: "hello", n: 1 });
    assert.deepEqual(await got, { title: "hello", n: 1 });
  } finally {
    p.disconnect();
  }
});

test("a wrong app key is refused: pusher-js reports Pusher's error 4001", async () => {
  const p = new Pusher("wrong-key", {
    wsHost: "127.0.0.1", wsPort: server.port, forceTLS: false, enabledTransports: ["ws"], cluster: "mt1",
  });
  try {
    // pusher-js wraps the server's pusher:error: {type: "WebSocketError", error: {type:
    // "PusherError", data: {code, message}}}; a 40xx code makes it stop, not reconnect.
    const stopped = new Promise((resolve) => p.connection.bind("state_change", (s) => s.current === "disconnected" && resolve()));
    const err = await new Promise((resolve) => p.connection.bind("error", resolve));
    assert.equal(err.error.type, "PusherError");
    assert.equal(err.error.data.code, 4001);
    await stopped;
  } finally {
    p.disconnect();
  }
});

test("private channels: the auth endpoint's signature admits, a wrong one is refused", async () => {
  const p = client();
  try {
    await connected(p);
    signWith = "not-the-app-secret-0123456789";
    const bad = p.subscribe("private-room-bad");
    await assert.rejects(subscribed(bad), (e) => e.data?.type === "AuthError" && e.data?.status === 401);
    p.unsubscribe("private-room-bad");
    signWith = PUSHER.secret;
    const ch = p.subscribe("private-room-1");
    await subscribed(ch);
    const got = next(ch, "news");
    await server.broadcast("private-room-1", "news", { ok: true });
    assert.deepEqual(await got, { ok: true });
  } finally {
    signWith = PUSHER.secret;
    p.disconnect();
  }
});

test("client events reach the other pusher-js clients and phoenix.js, not the sender; phoenix.js pushes reach pusher-js", async () => {
  const a = client();
  const b = client();
  const phx = new Socket(`ws://127.0.0.1:${server.port}/socket`, { transport: WebSocket, params: { token: token("alice") } });
  try {
    await Promise.all([connected(a), connected(b)]);
    const ca = a.subscribe("private-room-2");
    const cb = b.subscribe("private-room-2");
    await Promise.all([subscribed(ca), subscribed(cb)]);
    phx.connect();
    const pc = phx.channel("private-room-2", {});
    await join(pc);

    let echoed = false;
    ca.bind("client-typing", () => { echoed = true; });
    const atB = next(cb, "client-typing");
    const atPhoenix = new Promise((resolve) => pc.on("client-typing", resolve));
    assert.equal(ca.trigger("client-typing", { who: "a" }), true);
    assert.deepEqual(await atB, { who: "a" });
    assert.deepEqual(await atPhoenix, { who: "a" });

    // Phoenix → pusher-js; A receives it too, after its own client event would have come.
    const atA = next(ca, "msg");
    const reply = await push(pc, "msg", { text: "from phoenix" });
    assert.equal(reply.status, "ok");
    assert.deepEqual(await atA, { text: "from phoenix" });
    assert.equal(echoed, false, "the sender received its own client event");
  } finally {
    a.disconnect();
    b.disconnect();
    phx.disconnect();
  }
});

test("presence channels: members by user_id, one member per user, member_added and member_removed", async () => {
  const a = client("ann");
  const b1 = client("bob");
  const b2 = client("bob");
  try {
    await Promise.all([connected(a), connected(b1), connected(b2)]);
    const ca = a.subscribe("presence-lobby");
    await subscribed(ca);
    assert.equal(ca.members.count, 1);
    assert.equal(ca.members.me.id, "ann");
    assert.deepEqual(ca.members.me.info, { name: "ANN" });

    const added = next(ca, "pusher:member_added");
    const cb1 = b1.subscribe("presence-lobby");
    await subscribed(cb1);
    assert.deepEqual(await added, { id: "bob", info: { name: "BOB" } });
    assert.equal(ca.members.count, 2);
    assert.equal(cb1.members.count, 2);
    assert.deepEqual(cb1.members.get("ann").info, { name: "ANN" });

    // Bob's second connection: no member_added (a's count stays 2, checked after a marker).
    let addedAgain = false;
    ca.bind("pusher:member_added", () => { addedAgain = true; });
    const cb2 = b2.subscribe("presence-lobby");
    await subscribed(cb2);
    assert.equal(cb2.members.count, 2);
    // A client event from Bob's second connection reaches Ann after any presence event.
    const marker = next(ca, "client-hi");
    cb2.trigger("client-hi", { n: 1 });
    assert.deepEqual(await marker, { n: 1 });
    assert.equal(addedAgain, false);
    assert.equal(ca.members.count, 2);

    // Bob's last connection leaving removes him.
    const removed = next(ca, "pusher:member_removed");
    b1.disconnect();
    b2.disconnect();
    assert.deepEqual(await removed, { id: "bob", info: { name: "BOB" } });
    assert.equal(ca.members.count, 1);
  } finally {
    a.disconnect();
    b1.disconnect();
    b2.disconnect();
  }
});
