// The admin console (/admin) in headless Chromium against real Plexus servers: sign-in refused
// and accepted, the live tail receiving a broadcast, broadcast and disconnect from the page
// acting on a real phoenix client, the charts drawing samples, a phone-width layout; and
// over HTTP: the console disabled in prod without a secret, bad input answered with JSON, and
// the nodes of a Redis cluster listed and one drained from another's console.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "node:http";
import { once } from "node:events";
import { chromium } from "playwright-core";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { Server, Redis, token, until, sleep, join, SECRET, API_KEY } from "./server.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ADMIN = "admin-secret-0123456789";
const SHOTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../target/screenshots");
let server, browser;
const sockets = [];

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}`);
  mkdirSync(SHOTS, { recursive: true });
  server = await Server.start({ PLEXUS_ADMIN_SECRET: ADMIN });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
      "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run", "--disable-sync"],
  });
});

after(async () => {
  sockets.forEach((s) => s.disconnect());
  await browser?.close();
  await server?.stop();
});

function connect(srv, sub) {
  const socket = new Socket(srv.url, { transport: WebSocket, params: { token: token(sub) }, reconnectAfterMs: () => 60000 });
  socket.connect();
  sockets.push(socket);
  return socket;
}

async function signIn(page, secret = ADMIN) {
  await page.goto(`${server.http}/admin`);
  await page.fill("#secret", secret);
  await page.click("#signin button");
}

const api = (srv, p, { method = "GET", body, auth } = {}) => fetch(`${srv.http}${p}`, {
  method,
  headers: { ...(body ? { "content-type": "application/json" } : {}), ...(auth ? { authorization: `Bearer ${auth}` } : {}) },
  body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
});

async function session(srv, secret = ADMIN) {
  const res = await api(srv, "/admin/api/session", { method: "POST", body: { secret } });
  assert.equal(res.status, 200);
  return (await res.json()).token;
}

test("console: a wrong secret is refused, the right one shows nodes, topics, charts and config", async () => {
  const alice = connect(server, "alice");
  const ch = alice.channel("room:admin", {});
  await join(ch);
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await signIn(page, "not-the-secret");
  await page.waitForFunction(() => document.getElementById("signin-error").textContent.includes("wrong admin secret"), null, { timeout: 5000 });
  assert.equal(await page.isHidden("#console"), true);
  await signIn(page);
  await page.waitForSelector("#nodes tbody tr", { timeout: 5000 });
  const row = await page.textContent("#nodes tbody tr");
  assert.match(row, /local \(this\)ok/);
  await page.waitForSelector('#topics tr[data-topic="room:admin"]', { timeout: 5000 });
  // Samples every 2 s: the charts draw at least two points and the connection line is > 0.
  await page.waitForFunction(() => Number(document.getElementById("chart-connections").dataset.points) >= 2, null, { timeout: 8000 });
  assert.ok(Number(await page.getAttribute("#chart-connections", "data-max")) >= 1);
  const config = JSON.parse(await page.textContent("#config"));
  assert.equal(config.jwt_secret, "<redacted>");
  assert.equal(config.admin_secret, "<redacted>");
  const text = await page.textContent("#config");
  for (const secret of [SECRET, API_KEY, ADMIN]) assert.ok(!text.includes(secret), "a secret is shown");
  await page.screenshot({ path: path.join(SHOTS, "admin-desktop.png"), fullPage: true });
  await page.close();
});

test("console: the live tail shows broadcasts, and broadcast and disconnect act on a real client", async () => {
  const bob = connect(server, "bob");
  const ch = bob.channel("room:tail", {});
  const got = [];
  ch.on("announce", (p) => got.push(p));
  await join(ch);
  let closed = false;
  bob.onClose(() => { closed = true; });
  const page = await browser.newPage();
  await signIn(page);
  await page.waitForSelector('#topics tr[data-topic="room:tail"] button:nth-of-type(2)', { timeout: 5000 });
  await page.click('#topics tr[data-topic="room:tail"] button:nth-of-type(2)');
  await page.waitForFunction(() => document.getElementById("tail-status").textContent.startsWith("Tailing room:tail"), null, { timeout: 5000 });
  await server.broadcast("room:tail", "from_backend", { n: 1 });
  await page.waitForFunction(() => document.getElementById("tail-log").textContent.match(/from_backend (#\d+ )?\{"n":1\}/), null, { timeout: 5000 });
  // Broadcast from the console: the phoenix client gets it, and the tail shows it.
  await page.fill("#bc-topic", "room:tail");
  await page.fill("#bc-event", "announce");
  await page.fill("#bc-payload", '{"body": "from the console"}');
  await page.click("#broadcast button");
  await until(() => got.length === 1, 5000, "the console's broadcast");
  assert.deepEqual(got[0], { body: "from the console" });
  await page.waitForFunction(() => document.getElementById("tail-log").textContent.includes("announce"), null, { timeout: 5000 });
  // Bad input: a payload that is not JSON is refused in the page, an empty event by the server.
  await page.fill("#bc-payload", "{nope");
  await page.click("#broadcast button");
  await page.waitForFunction(() => document.getElementById("bc-result").textContent.startsWith("Payload is not JSON"), null, { timeout: 5000 });
  await page.fill("#bc-payload", "{}");
  await page.evaluate(() => { document.getElementById("bc-event").removeAttribute("required"); document.getElementById("bc-event").value = ""; });
  await page.click("#broadcast button");
  await page.waitForFunction(() => document.getElementById("bc-result").textContent.startsWith("Refused:"), null, { timeout: 5000 });
  await page.screenshot({ path: path.join(SHOTS, "admin-tail.png"), fullPage: true });
  // Disconnect bob everywhere: his socket is closed by the server.
  await page.fill("#dc-sub", "bob");
  await page.click("#disconnect button");
  await page.waitForFunction(() => document.getElementById("dc-result").textContent.startsWith("Disconnected 1"), null, { timeout: 5000 });
  await until(() => closed, 5000, "bob's socket closed");
  await page.close();
});

test("console: phone width has no horizontal scroll", async () => {
  const ctx = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await ctx.newPage();
  await signIn(page);
  await page.waitForSelector("#nodes tbody tr", { timeout: 5000 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone`);
  await page.screenshot({ path: path.join(SHOTS, "admin-phone.png"), fullPage: false });
  await ctx.close();
});

test("admin API: no session → 401, bad bodies → 400 JSON, unknown node → 404, too many tails → 429", async () => {
  for (const [m, p] of [["GET", "/admin/api/overview"], ["GET", "/admin/api/config"], ["POST", "/admin/api/disconnect"], ["GET", "/admin/api/tail?topic=x"]]) {
    const res = await api(server, p, { method: m, body: m === "POST" ? { sub: "x" } : undefined });
    assert.equal(res.status, 401, p);
    assert.match((await res.json()).error, /sign in/);
  }
  const forged = await api(server, "/admin/api/overview", { auth: token("plexus-admin", { roles: ["plexus-admin"] }) });
  assert.equal(forged.status, 401, "a user token signed with the JWT secret is not a session");
  const t = await session(server);
  const bad = await api(server, "/admin/api/broadcast", { method: "POST", body: "{", auth: t });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error, /invalid body/);
  const drain = await api(server, "/admin/api/drain", { method: "POST", body: { node: "nope" }, auth: t });
  assert.equal(drain.status, 404);
  assert.match((await drain.json()).error, /no live node/);
  const noTopic = await api(server, "/admin/api/tail", { auth: t });
  assert.equal(noTopic.status, 400);
  const tails = [];
  for (let i = 0; i < 16; i++) {
    const ctl = new AbortController();
    const res = await fetch(`${server.http}/admin/api/tail?topic=t:${i}`, { headers: { authorization: `Bearer ${t}` }, signal: ctl.signal });
    assert.equal(res.status, 200);
    tails.push(ctl);
  }
  const over = await api(server, "/admin/api/tail?topic=t:x", { auth: t });
  assert.equal(over.status, 429);
  tails.forEach((c) => c.abort());
  // Each aborted tail frees its slot when its stream is dropped.
  await until(async () => (await api(server, "/admin/api/tail?topic=t:y", { auth: t }).then((r) => { r.body?.cancel(); return r.status; })) === 200, 5000, "tail slots freed");
});

test("prod without an admin secret: every /admin path is 404 with a JSON reason", async () => {
  const prod = await Server.start({ PLEXUS_PROFILE: "prod" });
  try {
    for (const p of ["/admin", "/admin/api/overview", "/admin/assets/admin.js"]) {
      const res = await api(prod, p);
      assert.equal(res.status, 404, p);
      assert.match((await res.json()).error, /admin console disabled/);
    }
    const res = await api(prod, "/admin/api/session", { method: "POST", body: { secret: API_KEY } });
    assert.equal(res.status, 404);
  } finally {
    await prod.stop();
  }
});

test("cluster: the console lists every node, tails and disconnects across nodes, and drains another one", async () => {
  const redis = await Redis.start();
  const dir = mkdtempSync(path.join(tmpdir(), "plexus-js-admin-"));
  const config = path.join(dir, "plexus.toml");
  writeFileSync(config, `profile = "dev"\nbroker = "redis"\n[redis]\nnode_timeout_secs = 2\n`);
  const env = { PLEXUS_CONFIG: config, PLEXUS_REDIS_URL: redis.url, PLEXUS_ADMIN_SECRET: ADMIN };
  const a = await Server.start(env);
  const b = await Server.start(env);
  try {
    const carol = connect(b, "carol");
    await join(carol.channel("room:cluster", {}));
    // A session from node a works on node b: no per-node session state.
    const t = await session(a);
    let overview;
    await until(async () => {
      overview = await (await api(a, "/admin/api/overview", { auth: t })).json();
      return overview.nodes.length === 2 && overview.nodes.some((n) => n.connections === 1);
    }, 8000, "both nodes listed");
    const other = overview.nodes.find((n) => n.id !== overview.this_node);
    assert.equal(other.connections, 1);
    assert.equal(other.transports.websocket, 1);
    assert.equal((await api(b, "/admin/api/overview", { auth: t })).status, 200);
    // A live tail on node a sees a broadcast published on node b.
    const ctl = new AbortController();
    const tail = await fetch(`${a.http}/admin/api/tail?topic=room:cluster`, { headers: { authorization: `Bearer ${t}` }, signal: ctl.signal });
    const reader = tail.body.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!seen.includes("subscribed")) seen += (await reader.read()).value;
    await b.broadcast("room:cluster", "from_b", { hello: "a" });
    while (!seen.includes("from_b")) seen += (await reader.read()).value;
    assert.match(seen, /"event":"from_b".*"payload":\{"hello":"a"\}/);
    ctl.abort();
    // Disconnect from node a's console closes carol's socket on node b.
    let closed = false;
    carol.onClose(() => { closed = true; });
    const dc = await api(a, "/admin/api/disconnect", { method: "POST", body: { sub: "carol" }, auth: t });
    assert.equal(dc.status, 200);
    await until(() => closed, 5000, "carol disconnected on node b");
    const res = await api(a, "/admin/api/drain", { method: "POST", body: { node: other.id }, auth: t });
    assert.equal(res.status, 200, await res.clone().text());
    await until(async () => (await fetch(`${b.http}/health`)).status === 503, 5000, "node b draining");
    assert.equal((await fetch(`${a.http}/health`)).status, 200);
  } finally {
    await a.stop();
    await b.stop();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a live tail counts as a subscriber: channel_occupied when it opens, channel_vacated when it closes", async () => {
  const events = [];
  const app = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => { body += d; });
    req.on("end", () => { events.push(...JSON.parse(body).events); res.end("{}"); });
  });
  app.listen(0, "127.0.0.1");
  await once(app, "listening");
  const srv = await Server.start({
    PLEXUS_ADMIN_SECRET: ADMIN,
    PLEXUS_HOOK_SECRET: "admin-js-hook-secret-0123",
    PLEXUS_WEBHOOK_URL: `http://127.0.0.1:${app.address().port}/webhook`,
    PLEXUS_WEBHOOK_BATCH_WAIT_MS: "10",
  });
  const of = (type) => events.filter((e) => e.type === type && e.topic === "room:quiet").length;
  try {
    const t = await session(srv);
    const ctl = new AbortController();
    const tail = await fetch(`${srv.http}/admin/api/tail?topic=room:quiet`, { headers: { authorization: `Bearer ${t}` }, signal: ctl.signal });
    const reader = tail.body.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!seen.includes("subscribed")) seen += (await reader.read()).value;
    await until(() => of("channel_occupied") === 1, 5000, "channel_occupied for the tail");
    // A client joining the occupied topic does not occupy it again; leaving does not vacate it.
    const dora = connect(srv, "dora");
    const ch = dora.channel("room:quiet", {});
    await join(ch);
    await srv.broadcast("room:quiet", "hello", {});
    while (!seen.includes("hello")) seen += (await reader.read()).value;
    await new Promise((r) => ch.leave().receive("ok", r));
    await sleep(200);
    assert.equal(of("channel_occupied"), 1);
    assert.equal(of("channel_vacated"), 0);
    ctl.abort();
    await until(() => of("channel_vacated") === 1, 5000, "channel_vacated when the tail closes");
    dora.disconnect();
  } finally {
    await srv.stop();
    app.close();
  }
});
