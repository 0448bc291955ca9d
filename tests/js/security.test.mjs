// The security model through the official phoenix client, over wss:// with a throwaway
// certificate: refusals phoenix.js can express, channel/event rules, rate limit, token refresh.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { Server, token, until, sleep, selfSignedCert } from "./server.mjs";

let server, dir, ca;
const sockets = [];

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "plexus-js-sec-"));
  const { cert, key } = selfSignedCert(dir);
  ca = readFileSync(cert);
  const config = path.join(dir, "plexus.toml");
  writeFileSync(config, `
profile = "prod"
allowed_origins = ["https://app.example.com"]
[tls]
cert = "${cert}"
key = "${key}"
[limits]
messages_per_second = 2
message_burst = 10
[[channels]]
topic = "room:staff"
join_roles = ["staff"]
[[channels]]
topic = "user:{sub}"
[[channels]]
topic = "room:*"
push_events = ["new_msg"]
event_roles = { delete_msg = ["moderator"] }
max_per_user = 1
`);
  server = await Server.start({ PLEXUS_CONFIG: config }, { tls: true });
});

after(async () => {
  sockets.forEach((s) => s.disconnect());
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** phoenix.js hands (url, protocols) to the transport; this one adds TLS trust and headers. */
function transport(extra = {}) {
  return class extends WebSocket {
    constructor(url, protocols) { super(url, protocols, { ca, ...extra }); }
  };
}

function connect(sub, { roles = [], wsOptions = {}, tokenValue } = {}) {
  const socket = new Socket(server.url, {
    transport: transport(wsOptions),
    params: { token: tokenValue ?? token(sub, { roles }) },
    reconnectAfterMs: () => 200,
    rejoinAfterMs: () => 60000,
  });
  socket.connect();
  sockets.push(socket);
  return socket;
}

const joinResult = (channel) => new Promise((resolve) => {
  channel.join()
    .receive("ok", (r) => resolve({ status: "ok", response: r }))
    .receive("error", (r) => resolve({ status: "error", response: r }))
    .receive("timeout", () => resolve({ status: "timeout" }));
});

const pushResult = (channel, event, payload) => new Promise((resolve) => {
  channel.push(event, payload)
    .receive("ok", (r) => resolve({ status: "ok", response: r }))
    .receive("error", (r) => resolve({ status: "error", response: r }))
    .receive("timeout", () => resolve({ status: "timeout" }));
});

test("wss: join and push work with a trusted certificate", async () => {
  const c = connect("alice").channel("room:tls");
  assert.equal((await joinResult(c)).status, "ok");
  assert.equal((await pushResult(c, "new_msg", { body: "over TLS" })).status, "ok");
});

test("refused connects: bad token, foreign origin; allowed origin passes", async () => {
  for (const [name, opts] of [
    ["bad token", { tokenValue: "garbage" }],
    ["expired token", { tokenValue: token("x", { ttl: -120 }) }],
    ["foreign origin", { wsOptions: { origin: "https://evil.example" } }],
  ]) {
    const socket = connect("mallory", opts);
    let errored = false;
    socket.onError(() => { errored = true; });
    await until(() => errored, 3000, `${name} refused`);
    assert.equal(socket.isConnected(), false, name);
    socket.disconnect();
  }
  const ok = connect("olivia", { wsOptions: { origin: "https://app.example.com" } });
  await until(() => ok.isConnected(), 3000, "allowed origin connects");
});

test("join rules: role required, {sub} binding, unmatched topic", async () => {
  const socket = connect("alice");
  for (const topic of ["room:staff", "user:bob", "elsewhere"]) {
    const c = socket.channel(topic);
    assert.deepEqual(await joinResult(c), { status: "error", response: { reason: "unauthorized", retry: false } }, topic);
    c.leave(); // stop phoenix.js from retrying a join that cannot succeed
  }
  assert.equal((await joinResult(socket.channel("user:alice"))).status, "ok");
  assert.equal((await joinResult(connect("sam", { roles: ["staff"] }).channel("room:staff"))).status, "ok");
});

test("event rules: a forbidden push gets an error and is not broadcast", async () => {
  const a = connect("erin").channel("room:events");
  const m = connect("mod", { roles: ["moderator"] }).channel("room:events");
  await joinResult(a);
  await joinResult(m);
  let leaked = false;
  m.on("delete_msg", () => { leaked = true; });
  assert.deepEqual(await pushResult(a, "delete_msg", { id: 1 }), { status: "error", response: { reason: "unauthorized" } });
  assert.deepEqual(await pushResult(a, "shout", {}), { status: "error", response: { reason: "unauthorized" } });
  await sleep(200);
  assert.equal(leaked, false);
  const got = new Promise((resolve) => a.on("delete_msg", resolve));
  assert.equal((await pushResult(m, "delete_msg", { id: 1 })).status, "ok");
  assert.deepEqual(await got, { id: 1 });
});

test("max_per_user: a second tab of the same user is refused on the channel", async () => {
  assert.equal((await joinResult(connect("frank").channel("room:once"))).status, "ok");
  const second = connect("frank").channel("room:once");
  const r = await joinResult(second);
  assert.equal(r.status, "error");
  assert.match(r.response.reason, /max_per_user/);
  assert.equal(r.response.retry, true);
  second.leave();
});

test("flood: pushes past the rate limit get 'rate limited'", async () => {
  const c = connect("flood").channel("room:flood");
  await joinResult(c);
  const results = await Promise.all(Array.from({ length: 16 }, () => pushResult(c, "new_msg", {})));
  const limited = results.filter((r) => r.status === "error" && r.response.reason === "rate limited");
  assert.ok(limited.length >= 5, JSON.stringify(results));
});

test("refresh_token on topic phoenix, through socket.push", async () => {
  const socket = connect("gina");
  await until(() => socket.isConnected(), 3000, "connected");
  const reply = new Promise((resolve) => {
    socket.onMessage((msg) => { if (msg.topic === "phoenix" && msg.ref === "refresh-1") resolve(msg.payload); });
  });
  socket.push({ topic: "phoenix", event: "refresh_token", payload: { token: token("gina", { ttl: 7200 }) }, ref: "refresh-1" });
  const payload = await reply;
  assert.equal(payload.status, "ok");
  assert.ok(payload.response.expires_at > Date.now() / 1000 + 3600);
});
