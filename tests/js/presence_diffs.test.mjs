// Merged presence diffs (`presence.diff_interval_ms`) with the real phoenix.js `Presence`:
// many members join and leave quickly (some join and leave inside one interval, one user
// holds two connections, one updates its meta), on one node and on two nodes sharing a
// Redis; every member's `Presence.list()` must end exact, and the diffs must be merged.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Socket, Presence } from "phoenix";
import WebSocket from "ws";
import { Server, Redis, token, until, sleep, join, push } from "./server.mjs";

const TOPIC = "room:crowd";
let redis, dir, config;
const servers = [];
const sockets = [];

before(async () => {
  redis = await Redis.start();
  dir = mkdtempSync(path.join(tmpdir(), "plexus-js-presence-"));
  config = path.join(dir, "plexus.toml");
  writeFileSync(config, `
profile = "dev"
[limits]
max_connections_per_user = 2
connect_rate_per_ip = 0.0
[[channels]]
topic = "room:*"
presence = true
`);
});

after(async () => {
  sockets.forEach((s) => s.disconnect());
  for (const s of servers) await s.stop();
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** A member: its socket, channel, phoenix.js Presence, and how many diffs it received. */
function member(url, sub) {
  const socket = new Socket(url, { transport: WebSocket, params: { token: token(sub) }, reconnectAfterMs: () => 100, rejoinAfterMs: () => 100 });
  socket.connect();
  sockets.push(socket);
  const channel = socket.channel(TOPIC, {});
  const presence = new Presence(channel);
  const m = { sub, socket, channel, presence, diffs: 0, entries: 0 };
  channel.on("presence_diff", (d) => {
    m.diffs += 1;
    m.entries += Object.keys(d.joins).length + Object.keys(d.leaves).length;
  });
  return m;
}

/** What `Presence.list()` says: user → number of metas (and the status of the metas that have one). */
function listed(m) {
  const out = {};
  m.presence.list((id, { metas }) => {
    out[id] = metas.map((x) => x.status || "-").sort().join(",");
  });
  return out;
}

async function crowd(urls) {
  const url = (i) => urls[i % urls.length];
  const watcher = member(url(0), "watcher");
  await join(watcher.channel);
  await until(() => "watcher" in listed(watcher), 5000, "watcher sees itself");
  const watcherDiffsBefore = watcher.diffs;
  // 40 users join at once; "twin" twice (two connections, two metas under one key).
  const members = [];
  for (let i = 0; i < 40; i++) members.push(member(url(i), `user${i}`));
  members.push(member(url(1), "twin"), member(url(0), "twin"));
  await Promise.all(members.map((m) => join(m.channel)));
  // Quickly: 10 leave, 5 ghosts join and leave, one updates its meta twice.
  const ghosts = [];
  for (let i = 0; i < 5; i++) ghosts.push(member(url(i), `ghost${i}`));
  await Promise.all(ghosts.map((g) => join(g.channel)));
  const leaving = members.slice(0, 10);
  await Promise.all([...leaving, ...ghosts].map((m) => new Promise((resolve) => m.channel.leave().receive("ok", resolve))));
  const updater = members[20];
  assert.equal((await push(updater.channel, "presence_update", { status: "busy" })).status, "ok");
  assert.equal((await push(updater.channel, "presence_update", { status: "away" })).status, "ok");
  // A late member arrives in the middle of it all.
  const late = member(url(1), "late");
  await join(late.channel);
  const stay = [watcher, ...members.slice(10), late];

  const expected = {};
  for (const m of stay) expected[m.sub] = m.sub === "twin" ? "-,-" : m.sub === updater.sub ? "away" : "-";
  const same = () => stay.every((m) => JSON.stringify(sortKeys(listed(m))) === JSON.stringify(sortKeys(expected)));
  await until(same, 15000, () => {
    const bad = stay.find((m) => JSON.stringify(sortKeys(listed(m))) !== JSON.stringify(sortKeys(expected)));
    return `every member exact; ${bad && bad.sub} has ${JSON.stringify(sortKeys(listed(bad)))}`;
  });
  // Still exact once everything has settled (nothing late undoes it).
  await sleep(1000);
  assert.ok(same(), "still exact after a second");
  // Merged: the watcher heard 40 + 2 joins, 10 + 5 leaves, 5 ghost joins, 2 updates and the
  // late join (66 single diffs without merging) in far fewer diffs.
  const diffs = watcher.diffs - watcherDiffsBefore;
  assert.ok(diffs < 33, `watcher received ${diffs} diffs (66 without merging)`);
  return { diffs };
}

const sortKeys = (o) => Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1)));

test("phoenix.js Presence ends exact with merged diffs on one node", async () => {
  const s = await Server.start({ PLEXUS_CONFIG: config, PLEXUS_PRESENCE_DIFF_INTERVAL_MS: "100" });
  servers.push(s);
  await crowd([s.url]);
});

test("phoenix.js Presence ends exact with merged diffs on two nodes sharing a Redis", async () => {
  const env = { PLEXUS_CONFIG: config, PLEXUS_PRESENCE_DIFF_INTERVAL_MS: "100", PLEXUS_BROKER: "redis", PLEXUS_REDIS_URL: redis.url };
  const a = await Server.start(env);
  const b = await Server.start(env);
  servers.push(a, b);
  await crowd([a.url, b.url]);
});
