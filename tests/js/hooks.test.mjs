// Application hooks and webhooks with the official phoenix client: a join hook's reply and
// presence meta reach phoenix.js, its refusals and failures arrive as join errors, a push hook
// stores a message and the server broadcasts what it returns, and webhooks report it all.
// The application is a real HTTP server here that verifies every signature with the code of
// docs/hooks.md's Express example.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { once } from "node:events";
import { writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Socket, Presence } from "phoenix";
import WebSocket from "ws";
import { Server, token, until, sleep, join, push } from "./server.mjs";

const HOOK_SECRET = "js-hook-secret-0123456789";

// As in docs/hooks.md: HMAC-SHA256 of `timestamp + "." + raw body`, compared in constant time.
function verified(headers, body) {
  const ts = headers["x-plexus-timestamp"] ?? "";
  const sig = headers["x-plexus-signature"] ?? "";
  if (!/^\d+$/.test(ts) || Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false;
  const expected =
    "sha256=" + createHmac("sha256", HOOK_SECRET).update(`${ts}.`).update(body).digest("hex");
  return sig.length === expected.length && timingSafeEqual(Buffer.from(sig), Buffer.from(expected));
}

const received = { join: [], push: [], events: [], unsigned: 0 };
let stored = 0;

function answer(url, req) {
  if (url === "/join") {
    received.join.push(req);
    if (req.topic === "room:secret") return { allow: false, reason: "not in this team" };
    if (req.topic === "room:slow") return new Promise((r) => setTimeout(() => r({ allow: true }), 3000));
    return { allow: true, reply: { team: 42 }, meta: { role: "lead" } };
  }
  if (url === "/push") {
    received.push.push(req);
    stored += 1;
    return {
      allow: true,
      reply: { id: stored },
      broadcast: { event: "new_msg", payload: { id: stored, body: req.payload.body, by: req.sub } },
    };
  }
  received.events.push(...req.events);
  return {};
}

let app, server, hookPort;
const sockets = [];

before(async () => {
  app = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const body = Buffer.concat(chunks);
      if (!verified(req.headers, body)) {
        received.unsigned += 1;
        res.writeHead(401).end();
        return;
      }
      const out = JSON.stringify(await answer(req.url, JSON.parse(body)));
      res.writeHead(200, { "content-type": "application/json" }).end(out);
    });
  });
  app.listen(0, "127.0.0.1");
  await once(app, "listening");
  hookPort = app.address().port;
  const dir = mkdtempSync(path.join(tmpdir(), "plexus-hooks-"));
  const config = path.join(dir, "plexus.toml");
  writeFileSync(config, `
profile = "dev"
[[channels]]
topic = "room:*"
presence = true
push_hook = "http://127.0.0.1:${hookPort}/push"
push_hook_events = ["new_msg"]
`);
  server = await Server.start({
    PLEXUS_CONFIG: config,
    PLEXUS_HOOK_SECRET: HOOK_SECRET,
    PLEXUS_JOIN_HOOK_URL: `http://127.0.0.1:${hookPort}/join`,
    PLEXUS_WEBHOOK_URL: `http://127.0.0.1:${hookPort}/webhook`,
    PLEXUS_HOOK_TIMEOUT_MS: "500",
    PLEXUS_WEBHOOK_BATCH_WAIT_MS: "10",
  });
});

after(async () => {
  sockets.forEach((s) => s.disconnect());
  await server.stop();
  app.close();
});

function connect(sub) {
  const socket = new Socket(server.url, {
    transport: WebSocket,
    params: { token: token(sub) },
    reconnectAfterMs: () => 100,
    rejoinAfterMs: () => 60000,
  });
  socket.connect();
  sockets.push(socket);
  return socket;
}

function joinReply(channel) {
  return new Promise((resolve) => {
    channel.join()
      .receive("ok", (r) => resolve({ status: "ok", response: r }))
      .receive("error", (r) => resolve({ status: "error", response: r }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  });
}

test("the join hook's reply and presence meta reach phoenix.js", async () => {
  const channel = connect("alice").channel("room:team42", { invite: "x1" });
  const presence = new Presence(channel);
  let metas = [];
  presence.onSync(() => { metas = presence.list((_, { metas }) => metas).flat(); });
  assert.deepEqual(await join(channel), { team: 42 });
  await until(() => metas.length === 1, 3000, "presence sync");
  assert.equal(metas[0].role, "lead");
  const req = received.join.find((r) => r.topic === "room:team42");
  assert.equal(req.sub, "alice");
  assert.deepEqual(req.params, { invite: "x1" });
});

test("refusals and failures arrive as join errors", async () => {
  const socket = connect("bob");
  const secret = socket.channel("room:secret", {});
  assert.deepEqual(await joinReply(secret), {
    status: "error",
    response: { reason: "not in this team", retry: false },
  });
  secret.leave();
  const started = Date.now();
  const slow = socket.channel("room:slow", {});
  assert.deepEqual(await joinReply(slow), {
    status: "error",
    response: { reason: "hook unavailable", retry: true },
  });
  assert.ok(Date.now() - started < 2000, "no hang");
  slow.leave();
});

test("a push hook stores the message; the server broadcasts what it returns", async () => {
  const a = connect("carol").channel("room:chat", {});
  const b = connect("dave").channel("room:chat", {});
  await join(a);
  await join(b);
  const got = new Promise((resolve) => b.on("new_msg", resolve));
  const reply = await push(a, "new_msg", { body: "hello" });
  assert.equal(reply.status, "ok");
  assert.ok(reply.response.id >= 1);
  assert.deepEqual(await got, { id: reply.response.id, body: "hello", by: "carol" });
  assert.equal(received.push.at(-1).event, "new_msg");
});

test("webhooks report connects, joins and disconnects, all signed", async () => {
  const socket = connect("erin");
  const channel = socket.channel("room:hooked", {});
  await join(channel);
  socket.disconnect();
  const ofErin = () => received.events.filter((e) => e.sub === "erin").map((e) => e.type);
  await until(() => ofErin().includes("disconnect"), 5000, "erin's disconnect webhook");
  assert.deepEqual(ofErin(), ["connect", "join", "leave", "disconnect"]);
  assert.ok(received.events.some((e) => e.type === "channel_occupied" && e.topic === "room:hooked"));
  assert.equal(received.unsigned, 0);
});
