// Headless Chromium (Debian's, driven by playwright-core) against a real Plexus server:
// the demo chat over WebSocket, the same chat when WebSocket is unavailable (phoenix.js falls
// back to LongPoll), and a native EventSource.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { Server, token } from "./server.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
let server, browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (scripts/test installs Debian's chromium)`);
  server = await Server.start();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const demo = () => `http://127.0.0.1:${server.port}/`;

async function joinChat(page, name) {
  await page.goto(demo());
  await page.fill("#name", name);
  await page.click("#login button");
  await page.waitForSelector("#send:not([hidden])", { timeout: 10000 });
}

async function say(page, text) {
  await page.fill("#body", text);
  await page.click("#send button");
}

const logHas = (page, text) => page.waitForFunction((t) => document.getElementById("log").textContent.includes(t), text, { timeout: 10000 });

test("demo page: two browser tabs chat over WebSocket and see each other online", async () => {
  const ctx = await browser.newContext();
  const ann = await ctx.newPage();
  const ben = await ctx.newPage();
  await joinChat(ann, "ann");
  await joinChat(ben, "ben");
  await say(ann, "hello from ann");
  await logHas(ben, "ann: hello from ann");
  await say(ben, "hi ann");
  await logHas(ann, "ben: hi ann");
  await ann.waitForFunction(() => document.getElementById("online").textContent === "online: ann, ben", null, { timeout: 10000 });
  assert.match(await ann.textContent("#status"), /connected \(WebSocket\)/);
  await ann.screenshot({ path: path.join(tmpdir(), "plexus-demo.png") });
  await ctx.close();
});

test("no WebSocket in the browser: phoenix.js falls back to LongPoll and still chats", async () => {
  const noWs = await browser.newContext();
  await noWs.addInitScript(() => { delete window.WebSocket; window.WebSocket = undefined; });
  const cleo = await noWs.newPage();
  const sockets = [];
  const longpolls = [];
  cleo.on("websocket", (ws) => sockets.push(ws.url()));
  cleo.on("request", (r) => { if (r.url().includes("/socket/longpoll")) longpolls.push(r.method()); });
  const withWs = await browser.newContext();
  const dan = await withWs.newPage();
  await joinChat(cleo, "cleo");
  await joinChat(dan, "dan");
  await say(cleo, "sent over longpoll");
  await logHas(dan, "cleo: sent over longpoll");
  await say(dan, "received over longpoll");
  await logHas(cleo, "dan: received over longpoll");
  assert.match(await cleo.textContent("#status"), /connected \(LongPoll\)/);
  assert.deepEqual(sockets, [], "the WebSocket-less page opened a WebSocket");
  assert.ok(longpolls.includes("GET") && longpolls.includes("POST"), JSON.stringify(longpolls));
  await noWs.close();
  await withWs.close();
});

test("a native EventSource receives broadcasts", async () => {
  const page = await browser.newPage();
  await page.goto(demo());
  const t = token("eve");
  const first = page.evaluate((t) => new Promise((resolve) => {
    const es = new EventSource(`/sse?topic=room:browser&token=${t}`);
    es.addEventListener("joined", () => { window.__joined = true; });
    es.onmessage = (e) => { const d = JSON.parse(e.data); if (d.event === "ping") { es.close(); resolve(d); } };
  }), t);
  await page.waitForFunction(() => window.__joined === true, null, { timeout: 10000 });
  await server.broadcast("room:browser", "ping", { from: "backend" });
  const d = await first;
  assert.deepEqual([d.topic, d.payload], ["room:browser", { from: "backend" }]);
  await page.close();
});
