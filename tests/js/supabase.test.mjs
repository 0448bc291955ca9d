// Supabase's own client, @supabase/realtime-js 2.119.1 (npm, unmodified), against Plexus with
// `[supabase] enabled = true`: Broadcast (its binary kind-3 frames, self and ack), Presence
// (track/untrack/presenceState, each meta stamped with the tracker's verified sub), setAuth (also
// supabase-js's flow: the anon key, then the user's JWT), backends publishing through Plexus's
// API, and the rules deciding joins. Node 20 has no global WebSocket, so the `ws` package is passed as
// `transport`, as realtime-js documents.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { RealtimeClient } from "@supabase/realtime-js";
import WebSocket from "ws";
import { Server, anonKey, token, until } from "./server.mjs";

let server, dir;
const clients = [];

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "plexus-js-supabase-"));
  const config = path.join(dir, "plexus.toml");
  writeFileSync(config, `
profile = "dev"
[supabase]
enabled = true
[[channels]]
topic = "staff*"
join_roles = ["staff"]
[[channels]]
topic = "*"
presence = true
`);
  server = await Server.start({ PLEXUS_CONFIG: config });
});

after(async () => {
  for (const c of clients) c.disconnect();
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
});

function client(sub, opts = {}) {
  const c = new RealtimeClient(`ws://localhost:${server.port}/realtime/v1`, {
    params: { apikey: sub === null ? anonKey() : token(sub, opts) },
    transport: WebSocket,
    heartbeatIntervalMs: 1000,
  });
  clients.push(c);
  return c;
}

function subscribe(channel) {
  return new Promise((resolve) => {
    channel.subscribe((status, err) => {
      if (status !== "SUBSCRIBED" || !err) resolve({ status, err });
    });
  });
}

test("broadcast: kind-3 frames relayed to others, to the sender with self, acknowledged with ack", async () => {
  const a = client("alice").channel("room1", { config: { broadcast: { self: true, ack: true } } });
  const b = client("bob").channel("room1", { config: { broadcast: { self: false, ack: false } } });
  const gotA = [], gotB = [];
  a.on("broadcast", { event: "msg" }, (m) => gotA.push(m));
  b.on("broadcast", { event: "msg" }, (m) => gotB.push(m));
  b.on("broadcast", { event: "other" }, () => gotB.push("wrong filter"));
  assert.equal((await subscribe(a)).status, "SUBSCRIBED");
  assert.equal((await subscribe(b)).status, "SUBSCRIBED");

  assert.equal(await a.send({ type: "broadcast", event: "msg", payload: { n: 1, text: "wörld" } }), "ok");
  assert.equal(await b.send({ type: "broadcast", event: "msg", payload: { n: 2 } }), "ok");
  await until(() => gotA.length === 2 && gotB.length === 1, 3000, "broadcasts");
  assert.deepEqual(gotA.map((m) => m.payload.n), [1, 2], "self: the sender hears itself");
  assert.deepEqual(gotB, [{ type: "broadcast", event: "msg", payload: { n: 1, text: "wörld" } }]);

  // A backend publishes through Plexus's API to the Supabase topic.
  await server.broadcast("realtime:room1", "msg", { n: 3 });
  await until(() => gotB.length === 2, 3000, "API broadcast");
  assert.deepEqual(gotB[1], { type: "broadcast", event: "msg", payload: { n: 3 } });
  assert.equal(await a.unsubscribe(), "ok");
});

test("presence: track, re-track, untrack, presenceState, server-made keys", async () => {
  const a = client("carol").channel("room2", { config: { presence: { key: "carol" } } });
  const b = client("dave").channel("room2", {});
  const events = [];
  b.on("presence", { event: "join" }, ({ key }) => events.push(`join ${key}`));
  b.on("presence", { event: "leave" }, ({ key }) => events.push(`leave ${key}`));
  assert.equal((await subscribe(a)).status, "SUBSCRIBED");
  assert.equal((await subscribe(b)).status, "SUBSCRIBED");

  assert.equal(await a.track({ online_at: "t1" }), "ok");
  await until(() => b.presenceState().carol, 3000, "carol present");
  assert.equal(b.presenceState().carol[0].online_at, "t1");
  assert.equal(typeof b.presenceState().carol[0].presence_ref, "string");

  assert.equal(await a.track({ online_at: "t2" }), "ok");
  await until(() => b.presenceState().carol?.[0]?.online_at === "t2", 3000, "re-track");
  assert.equal(b.presenceState().carol.length, 1, "a re-track replaces the meta");

  // No key given: the server makes one (a UUID), as Supabase does.
  assert.equal(await b.track({ me: true }), "ok");
  await until(() => Object.keys(a.presenceState()).length === 2, 3000, "dave's entry");
  const key = Object.keys(a.presenceState()).find((k) => k !== "carol");
  assert.match(key, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);

  assert.equal(await a.untrack(), "ok");
  await until(() => !b.presenceState().carol, 3000, "carol gone");
  assert.ok(events.includes("join carol") && events.includes("leave carol"), JSON.stringify(events));
});

test("setAuth: a new token of the same user is adopted silently; another user's closes the channel", async () => {
  const c = client("erin");
  const ch = c.channel("room3", {});
  const system = [];
  ch.on("system", {}, (m) => system.push(m));
  assert.equal((await subscribe(ch)).status, "SUBSCRIBED");
  await c.setAuth(token("erin", { ttl: 7200 }));
  const got = [];
  ch.on("broadcast", { event: "x" }, (m) => got.push(m));
  await server.broadcast("realtime:room3", "x", { still: "joined" });
  await until(() => got.length === 1, 3000, "still joined after setAuth");
  assert.deepEqual(system, []);

  await c.setAuth(token("mallory"));
  await until(() => ch.state === "closed", 3000, "closed after a foreign token");
  assert.equal(system[0].status, "error");
  assert.equal(system[0].extension, "system");
  assert.equal(system[0].channel, "room3");
  assert.match(system[0].message, /sub/);
});

test("supabase-js's auth: the anon key, then setAuth(user JWT) signs in once; presence metas carry the verified sub", async () => {
  const c = client(null);
  const ch = c.channel("room5", { config: { presence: { key: "ivy" } } });
  const system = [];
  ch.on("system", {}, (m) => system.push(m));
  assert.equal((await subscribe(ch)).status, "SUBSCRIBED");
  const watcher = client("walt").channel("room5", {});
  assert.equal((await subscribe(watcher)).status, "SUBSCRIBED");

  // Anonymous: a meta claiming a sub is tracked with the server's null.
  assert.equal(await ch.track({ sub: "ivy" }), "ok");
  await until(() => watcher.presenceState().ivy, 3000, "anonymous track");
  assert.equal(watcher.presenceState().ivy[0].sub, null);

  // The user signs in: the channel stays joined, and the next track carries the user's sub.
  await c.setAuth(token("ivy"));
  assert.equal(await ch.track({ online: true }), "ok");
  await until(() => watcher.presenceState().ivy?.[0]?.sub === "ivy", 3000, "signed-in track");
  const got = [];
  ch.on("broadcast", { event: "x" }, (m) => got.push(m));
  await server.broadcast("realtime:room5", "x", { still: "joined" });
  await until(() => got.length === 1, 3000, "still joined after the sign-in");
  assert.deepEqual(system, []);

  // Only once: another user's token closes the channel with the reason.
  await c.setAuth(token("mallory"));
  await until(() => ch.state === "closed", 3000, "closed after another user's token");
  assert.equal(system[0].status, "error");
  assert.match(system[0].message, /same sub/);
});

test("rules decide Supabase joins, and postgres_changes are refused with a reason", async () => {
  const denied = client("frank").channel("staffroom", {});
  const r = await subscribe(denied);
  assert.equal(r.status, "CHANNEL_ERROR");
  assert.match(String(r.err), /unauthorized/);
  const staff = client("gina", { roles: ["staff"] }).channel("staffroom", {});
  assert.equal((await subscribe(staff)).status, "SUBSCRIBED");

  const pg = client("hank").channel("room4", {});
  pg.on("postgres_changes", { event: "INSERT", schema: "public", table: "todos" }, () => {});
  const p = await subscribe(pg);
  assert.equal(p.status, "CHANNEL_ERROR");
  assert.match(String(p.err), /postgres_changes are not supported/);
});
