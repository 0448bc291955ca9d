// The demo pages in headless Chromium against a real dev-profile server: chat with presence,
// typing, history after a reload and recovery after a drop; the classroom's rules refusing
// and admitting joins; the live page moving with the built-in feed, over WebSocket and with
// LongPoll forced; and `plexus demo-feed` publishing through the HTTP API.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { Server, BIN, API_KEY, token, until, join } from "./server.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../target/screenshots");
let server, browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}`);
  mkdirSync(SHOTS, { recursive: true });
  server = await Server.start();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
      "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const url = (p) => `http://127.0.0.1:${server.port}${p}`;
const textIs = (page, id, pred, what) => page.waitForFunction(
  ([id, src]) => new Function("t", `return ${src}`)(document.getElementById(id).textContent), [id, pred], { timeout: 10000 },
).catch((e) => { throw new Error(`${what}: ${e.message}`); });

async function joinChat(page, name) {
  await page.goto(url("/"));
  await page.fill("#name", name);
  await page.click("#login button");
  await page.waitForSelector("#send:not([hidden])", { timeout: 10000 });
}

async function say(page, text) {
  await page.fill("#body", text);
  await page.click("#send button");
}

test("chat: two browsers see each other online and typing; a reload shows the history; a drop recovers", async () => {
  const a = await browser.newContext();
  const b = await browser.newContext();
  const ann = await a.newPage();
  const ben = await b.newPage();
  await joinChat(ann, "ann");
  await joinChat(ben, "ben");
  await textIs(ann, "online", "t === 'online: ann, ben'", "ann sees both online");
  await ben.type("#body", "hel");
  await textIs(ann, "typing", "t === 'ben is typing…'", "ann sees ben typing");
  await ben.fill("#body", "");
  await say(ann, "first message");
  await textIs(ben, "log", "t.includes('ann: first message')", "ben gets ann's message");
  await textIs(ann, "typing", "t === ''", "typing ends after 2 s");
  await ann.screenshot({ path: path.join(SHOTS, "demo-chat.png"), fullPage: true });
  // Reload: the page joins again and shows the room's last messages from its history.
  await ben.reload();
  await ben.fill("#name", "ben");
  await ben.click("#login button");
  await textIs(ben, "log", "t.includes('ann: first message') && t.includes('before you joined')", "history after reload");
  // A drop: ben's socket goes away, ann talks, ben comes back and gets what he missed, once.
  await ben.evaluate(() => window.demoSocket.disconnect());
  await textIs(ann, "online", "t === 'online: ann'", "ben left");
  await say(ann, "while you were away");
  await ben.evaluate(() => window.demoSocket.connect());
  await textIs(ben, "log", "t.includes('ann: while you were away') && t.includes('missed messages recovered')", "recovery");
  const count = await ben.evaluate(() => [...document.querySelectorAll("#log div")].filter((d) => d.textContent === "ann: while you were away").length);
  assert.equal(count, 1);
  await a.close();
  await b.close();
});

test("roles: a student is refused the teacher channel and others' private channels; the teacher is not", async () => {
  const page = await browser.newPage();
  await page.goto(url("/demo/roles"));
  await page.fill("#name", "sam");
  await page.selectOption("#role", "student");
  await page.click("#login button");
  await page.waitForSelector("#channels:not([hidden])");
  await textIs(page, "status", "t === 'connected (WebSocket)'", "connected");
  for (const t of ["teams:red", "teacher", "user:{me}", "user:someone-else"]) await page.click(`#tries button[data-topic="${t}"]`);
  const result = (topic) => page.waitForSelector(`#results li[data-topic="${topic}"]`).then((li) => li.textContent());
  assert.equal(await result("teams:red"), "teams:red: joined");
  assert.equal(await result("teacher"), "teacher: refused: unauthorized");
  assert.equal(await result("user:sam"), "user:sam: joined");
  assert.equal(await result("user:someone-else"), "user:someone-else: refused: unauthorized");
  await page.screenshot({ path: path.join(SHOTS, "demo-roles.png"), fullPage: true });
  const teacher = await browser.newPage();
  await teacher.goto(url("/demo/roles"));
  await teacher.fill("#name", "tess");
  await teacher.selectOption("#role", "teacher");
  await teacher.click("#login button");
  await teacher.click('#tries button[data-topic="teacher"]');
  assert.equal(await teacher.waitForSelector('#results li[data-topic="teacher"]').then((li) => li.textContent()), "teacher: joined");
  await page.close();
  await teacher.close();
});

test("live data: the page moves with the built-in feed, over WebSocket and with LongPoll forced", async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(url("/demo/live"));
  await textIs(page, "status", "t === 'connected (WebSocket)'", "WebSocket");
  await textIs(page, "updates", "Number(t) >= 2", "two updates");
  assert.equal(await page.locator("#ticker tbody tr").count(), 4);
  assert.equal(await page.locator("#map g").count(), 5);
  await page.screenshot({ path: path.join(SHOTS, "demo-live.png"), fullPage: true });
  await page.check("#force-longpoll");
  await page.waitForLoadState();
  const polls = [];
  page.on("request", (r) => { if (r.url().includes("/socket/longpoll")) polls.push(r.method()); });
  await textIs(page, "status", "t === 'connected (LongPoll)'", "LongPoll");
  await textIs(page, "updates", "Number(t) >= 2", "two updates over LongPoll");
  assert.ok(polls.includes("GET"), "no LongPoll request seen");
  await ctx.close();
});

test("plexus demo-feed publishes through the HTTP API of a server without the built-in feed", async () => {
  const quiet = await Server.start({ PLEXUS_DEMO_FEED: "0" });
  try {
    const socket = new Socket(quiet.url, { transport: WebSocket, params: { token: token("watcher") } });
    socket.connect();
    const channel = socket.channel("demo:live", {});
    const got = [];
    channel.on("update", (u) => got.push(u));
    await join(channel);
    const feed = spawn(BIN, ["demo-feed", "--url", quiet.http, "--count", "2"], { env: { PATH: process.env.PATH, PLEXUS_API_KEY: API_KEY }, stdio: "ignore" });
    const [code] = await once(feed, "exit");
    assert.equal(code, 0);
    await until(() => got.length === 2, 5000, "two updates");
    assert.deepEqual(got.map((u) => u.seq), [1, 2]);
    assert.equal(got[0].points.length, 5);
    const bad = spawn(BIN, ["demo-feed", "--url", "https://example.invalid"], { env: { PATH: process.env.PATH, PLEXUS_API_KEY: API_KEY }, stdio: "ignore" });
    assert.equal((await once(bad, "exit"))[0], 2);
    socket.disconnect();
  } finally {
    await quiet.stop();
  }
});
