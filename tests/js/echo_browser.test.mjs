// Laravel Echo 2.x (npm `laravel-echo`, its IIFE build) with pusher-js's browser build, in
// headless Chromium (Debian's, driven by playwright-core), against Plexus in Pusher mode. A
// tiny HTTP server plays the Laravel app: it serves the page (with Laravel's `csrf-token` meta
// tag, the scripts straight from node_modules) and Laravel's `/broadcasting/auth`, which signs
// with the `pusher` npm SDK's `authorizeChannel` as Laravel's Pusher broadcaster does. The
// backend publishes with the same SDK's `trigger` and with Plexus's `POST /api/broadcast`.
// Covered: `channel().listen` (Echo's `App\Events\` namespace and dotted `broadcastAs` names,
// `listenToAll`), `private().listen` (signed; a 403 from the app and a forged signature
// refused; `notification()`), presence `join().here/joining/leaving` across two pages and
// `Echo.leave()`, `whisper`/`listenForWhisper`, the `reverb` broadcaster's options, and
// Laravel's `toOthers()` (the API's `socket_id` exclusion).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { once } from "node:events";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { chromium } from "playwright-core";
import PusherServer from "pusher";
import { Server, PUSHER, PUSHER_ENV, sleep } from "./server.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const modules = path.join(path.dirname(fileURLToPath(import.meta.url)), "node_modules");
const SCRIPTS = {
  "/js/pusher.js": path.join(modules, "pusher-js/dist/web/pusher.js"),
  "/js/echo.js": path.join(modules, "laravel-echo/dist/echo.iife.js"),
};
const CSRF = "csrf-token-from-the-laravel-page";
// Laravel's users, found by their session cookie.
const USERS = { "ann-session": { id: 1, name: "Ann" }, "ben-session": { id: 2, name: "Ben" } };

let server, browser, app, sdk, forger;
const authRequests = []; // what /broadcasting/auth received, for the assertions

/** routes/channels.php: who may listen on which private and presence channel. */
function channelPolicy(user, channel) {
  if (channel === "private-chat.1") return true; // both users are in chat 1
  if (channel === "private-chat.forged") return true; // signed with the wrong secret below
  if (channel === "private-chat.2") return false; // nobody here: Laravel answers 403
  if (channel === `private-App.Models.User.${user.id}`) return true; // notifications
  if (channel === "presence-room.1") return { id: user.id, name: user.name };
  return false;
}

/** Laravel's `/broadcasting/auth`: CSRF check (419), session user (403), channel policy (403). */
async function broadcastingAuth(req, res) {
  let body = "";
  for await (const chunk of req) body += chunk;
  // pusher-js's default transport posts a form; an `authorizer` with fetch may post JSON.
  let form;
  try {
    form = (req.headers["content-type"] || "").includes("json")
      ? new Map(Object.entries(JSON.parse(body)))
      : new URLSearchParams(body);
  } catch {
    res.writeHead(400).end();
    return;
  }
  const socketId = form.get("socket_id");
  const channel = form.get("channel_name");
  const session = /laravel_session=([^;]+)/.exec(req.headers.cookie || "")?.[1];
  authRequests.push({ channel, socketId, csrf: req.headers["x-csrf-token"], session });
  const answer = (status, json) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(json));
  };
  if (req.headers["x-csrf-token"] !== CSRF) return answer(419, { message: "CSRF token mismatch." });
  const user = USERS[session];
  const allowed = user && channelPolicy(user, channel);
  if (!allowed) return answer(403, { message: "This action is unauthorized." });
  const signer = channel === "private-chat.forged" ? forger : sdk;
  if (channel.startsWith("presence-")) {
    return answer(200, signer.authorizeChannel(socketId, channel, { user_id: user.id, user_info: allowed }));
  }
  return answer(200, signer.authorizeChannel(socketId, channel));
}

/**
 * The Laravel page: csrf meta tag, pusher-js and Echo as scripts, `window.Echo` as Laravel's
 * resources/js/echo.js makes it for the `pusher` broadcaster, or for `reverb` (what
 * `php artisan install:broadcasting` writes for Reverb: no cluster, ws and wss).
 */
function page(authMode, broadcaster) {
  const options = broadcaster === "reverb" ? {
    broadcaster: "reverb",
    key: PUSHER.key,
    wsHost: "127.0.0.1",
    wsPort: server.port,
    wssPort: server.port,
    forceTLS: false,
    enabledTransports: ["ws", "wss"],
  } : {
    broadcaster: "pusher",
    key: PUSHER.key,
    cluster: "mt1",
    wsHost: "127.0.0.1",
    wsPort: server.port,
    wssPort: server.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    authEndpoint: "/broadcasting/auth",
  };
  // The other way Laravel's docs configure authorisation: an `authorizer` calling the app.
  const authorizer = authMode === "authorizer" ? `
    options.authorizer = (channel) => ({
      authorize: (socketId, callback) => {
        fetch("/broadcasting/auth", {
          method: "POST",
          headers: { "content-type": "application/json", "x-csrf-token": document.querySelector('meta[name="csrf-token"]').content },
          body: JSON.stringify({ socket_id: socketId, channel_name: channel.name }),
        }).then(async (r) => r.ok ? callback(null, await r.json()) : callback(new Error("status " + r.status), null))
          .catch((e) => callback(e, null));
      },
    });` : "";
  return `<!doctype html>
<html><head><meta charset="utf-8"><meta name="csrf-token" content="${CSRF}"><title>echo</title>
<script src="/js/pusher.js"></script>
<script src="/js/echo.js"></script>
<script>
  const options = ${JSON.stringify(options)};
  ${authorizer}
  window.log = [];
  window.record = (tag) => (e) => window.log.push([tag, e]);
  window.Echo = new Echo.default(options);
</script></head><body>echo</body></html>`;
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (scripts/test installs Debian's chromium)`);
  server = await Server.start({ ...PUSHER_ENV });
  const sdkOptions = { appId: PUSHER.appId, key: PUSHER.key, host: "127.0.0.1", port: String(server.port), useTLS: false };
  sdk = new PusherServer({ ...sdkOptions, secret: PUSHER.secret });
  forger = new PusherServer({ ...sdkOptions, secret: "not-the-app-secret-0123456789" });
  app = createServer(async (req, res) => {
    const url = new URL(req.url, "http://app");
    if (req.method === "POST" && url.pathname === "/broadcasting/auth") return broadcastingAuth(req, res);
    if (req.method === "GET" && SCRIPTS[url.pathname]) {
      res.writeHead(200, { "content-type": "text/javascript" });
      return res.end(readFileSync(SCRIPTS[url.pathname]));
    }
    if (req.method === "GET" && url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      return res.end(page(url.searchParams.get("auth"), url.searchParams.get("broadcaster")));
    }
    res.writeHead(404).end();
  });
  app.listen(0, "127.0.0.1");
  await once(app, "listening");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-dev-shm-usage", "--disable-component-update", "--no-first-run", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  app?.close();
  await server?.stop();
});

const appUrl = () => `http://127.0.0.1:${app.address().port}`;

/** A logged-in user's page (own browser context: own cookies, own socket), Echo connected. */
async function openPage(session, { auth = "endpoint", broadcaster = "pusher" } = {}) {
  const ctx = await browser.newContext();
  await ctx.addCookies([{ name: "laravel_session", value: session, url: appUrl() }]);
  const p = await ctx.newPage();
  p.sockets = [];
  p.on("websocket", (ws) => p.sockets.push(ws.url()));
  p.on("pageerror", (e) => console.error(`page error (${session}):`, e));
  await p.goto(`${appUrl()}/?auth=${auth}&broadcaster=${broadcaster}`);
  await p.waitForFunction(() => window.Echo.connectionStatus() === "connected", null, { timeout: 10000 });
  p.close = async () => ctx.close();
  return p;
}

/** Waits until the page's log has `n` entries and returns it. */
async function logOf(p, n) {
  await p.waitForFunction((n) => window.log.length >= n, n, { timeout: 10000 });
  return p.evaluate(() => window.log);
}

test("Echo.channel().listen: dotted and App\\Events\\ names, from the pusher SDK and from POST /api/broadcast", async () => {
  const p = await openPage("ann-session");
  try {
    assert.equal(p.sockets.length, 1);
    assert.match(p.sockets[0], new RegExp(`^ws://127\\.0\\.0\\.1:${server.port}/app/${PUSHER.key}\\?protocol=7&client=js&version=8\\.6\\.0`));
    await p.evaluate(() => new Promise((resolve) => {
      window.all = [];
      window.Echo.channel("orders")
        .listen(".created", window.record("created")) // broadcastAs(): 'created'
        .listen("OrderShipped", window.record("shipped")) // App\Events\OrderShipped
        .listenToAll((event, data) => window.all.push([event, data.id ?? data.wrong]))
        .subscribed(resolve);
    }));
    // Echo prefixes names without a leading dot: a bare `OrderShipped` is not its event, nor
    // is `App\Events\created` the dotted one. Published first; the log shows they never came.
    await sdk.trigger("orders", "OrderShipped", { wrong: 1 });
    await sdk.trigger("orders", "App\\Events\\created", { wrong: 2 });
    await sdk.trigger("orders", "created", { id: 7, via: "sdk" });
    await sdk.trigger("orders", "App\\Events\\OrderShipped", { id: 8, via: "sdk" });
    await server.broadcast("orders", "created", { id: 9, via: "api" });
    await server.broadcast("orders", "App\\Events\\OrderShipped", { id: 10, via: "api" });
    await logOf(p, 4);
    await sleep(100); // nothing else trails in
    assert.deepEqual(await p.evaluate(() => window.log), [
      ["created", { id: 7, via: "sdk" }],
      ["shipped", { id: 8, via: "sdk" }],
      ["created", { id: 9, via: "api" }],
      ["shipped", { id: 10, via: "api" }],
    ]);
    // listenToAll() strips Echo's namespace and marks the others with a dot.
    assert.deepEqual(await p.evaluate(() => window.all), [
      [".OrderShipped", 1], ["created", 2], [".created", 7], ["OrderShipped", 8], [".created", 9], ["OrderShipped", 10],
    ]);
  } finally {
    await p.close();
  }
});

test("Echo.private().listen: Laravel's auth endpoint signs private-chat.1; its 403 and a forged signature refuse", async () => {
  const p = await openPage("ann-session");
  try {
    authRequests.length = 0;
    await p.evaluate(() => new Promise((resolve, reject) => {
      window.Echo.private("chat.1")
        .listen("MessageSent", window.record("message"))
        .subscribed(resolve)
        .error((e) => reject(new Error(JSON.stringify(e))));
    }));
    const socketId = await p.evaluate(() => window.Echo.socketId());
    assert.deepEqual(authRequests, [{ channel: "private-chat.1", socketId, csrf: CSRF, session: "ann-session" }]);
    await sdk.trigger("private-chat.1", "App\\Events\\MessageSent", { body: "hi" });
    assert.deepEqual(await logOf(p, 1), [["message", { body: "hi" }]]);

    // Laravel's broadcast notifications: the user's private channel, Echo's notification().
    await p.evaluate(() => new Promise((resolve, reject) => {
      window.Echo.private("App.Models.User.1")
        .notification(window.record("notification"))
        .subscribed(resolve)
        .error((e) => reject(new Error(JSON.stringify(e))));
    }));
    const notification = { id: "9f1c", type: "App\\Notifications\\InvoicePaid", amount: 42 };
    await sdk.trigger("private-App.Models.User.1", "Illuminate\\Notifications\\Events\\BroadcastNotificationCreated", notification);
    assert.deepEqual((await logOf(p, 2))[1], ["notification", notification]);
    await p.evaluate(() => { window.log = [window.log[0]]; });

    // Laravel's channel callback says no: the app answers 403, Echo's error() gets it.
    const refused = await p.evaluate(() => new Promise((resolve) => {
      window.Echo.private("chat.2").subscribed(() => resolve("subscribed")).error(resolve);
    }));
    assert.equal(refused.type, "AuthError");
    assert.equal(refused.status, 403);

    // The app signs with another secret: Plexus refuses the subscription (Pusher's 401).
    // Its events do not reach the page (checked after a later event on chat.1 arrives).
    const forged = await p.evaluate(() => new Promise((resolve) => {
      window.Echo.private("chat.forged")
        .listen("MessageSent", window.record("forged"))
        .subscribed(() => resolve("subscribed"))
        .error(resolve);
    }));
    assert.equal(forged.type, "AuthError");
    assert.equal(forged.status, 401);
    await sdk.trigger("private-chat.forged", "App\\Events\\MessageSent", { body: "secret" });
    await sdk.trigger("private-chat.1", "App\\Events\\MessageSent", { body: "after" });
    assert.deepEqual(await logOf(p, 2), [["message", { body: "hi" }], ["message", { body: "after" }]]);
  } finally {
    await p.close();
  }
});

test("Echo.join(): here lists both users, joining fires on the other page, leaving on Echo.leave() and when a page closes", async () => {
  const join = (p) => p.evaluate(() => new Promise((resolve) => {
    window.Echo.join("room.1")
      .here((members) => { window.record("here")(members); resolve(); })
      .joining(window.record("joining"))
      .leaving(window.record("leaving"))
      .listenForWhisper("typing", window.record("typing"))
      .error((e) => window.record("error")(e));
  }));
  const byId = (members) => [...members].sort((a, b) => a.id - b.id);
  const ann = await openPage("ann-session");
  const ben = await openPage("ben-session", { auth: "authorizer" });
  try {
    await join(ann);
    assert.deepEqual(await logOf(ann, 1), [["here", [{ id: 1, name: "Ann" }]]]);
    await join(ben);
    const benLog = await logOf(ben, 1);
    assert.equal(benLog[0][0], "here");
    assert.deepEqual(byId(benLog[0][1]), [{ id: 1, name: "Ann" }, { id: 2, name: "Ben" }]);
    assert.deepEqual((await logOf(ann, 2))[1], ["joining", { id: 2, name: "Ben" }]);
    // Ben's page used the `authorizer` option: the app still saw his session and the CSRF token.
    assert.ok(authRequests.some((r) => r.channel === "presence-room.1" && r.session === "ben-session" && r.csrf === CSRF));

    // Whispers work on presence channels too.
    await ann.evaluate(() => window.Echo.join("room.1").whisper("typing", { name: "Ann" }));
    assert.deepEqual((await logOf(ben, 2))[1], ["typing", { name: "Ann" }]);

    // Echo.leave() (a component unmounting) unsubscribes: Ben leaves, then comes back.
    await ben.evaluate(() => window.Echo.leave("room.1"));
    assert.deepEqual((await logOf(ann, 3))[2], ["leaving", { id: 2, name: "Ben" }]);
    await join(ben);
    assert.deepEqual(byId((await logOf(ben, 3))[2][1]), [{ id: 1, name: "Ann" }, { id: 2, name: "Ben" }]);
    assert.deepEqual((await logOf(ann, 4))[3], ["joining", { id: 2, name: "Ben" }]);

    // Closing the page (the socket) removes him too.
    await ben.close();
    assert.deepEqual((await logOf(ann, 5))[4], ["leaving", { id: 2, name: "Ben" }]);
    await sleep(100);
    assert.equal(await ann.evaluate(() => window.log.length), 5);
  } finally {
    await ann.close();
    await ben.close();
  }
});

test("whisper on a private channel reaches the other page's listenForWhisper, not the sender", async () => {
  const listen = (p) => p.evaluate(() => new Promise((resolve, reject) => {
    window.Echo.private("chat.1")
      .listenForWhisper("typing", window.record("typing"))
      .subscribed(resolve)
      .error((e) => reject(new Error(JSON.stringify(e))));
  }));
  const ann = await openPage("ann-session");
  const ben = await openPage("ben-session");
  try {
    await Promise.all([listen(ann), listen(ben)]);
    await ann.evaluate(() => window.Echo.private("chat.1").whisper("typing", { name: "Ann", typing: true }));
    assert.deepEqual(await logOf(ben, 1), [["typing", { name: "Ann", typing: true }]]);
    // Ben answers; Ann's own whisper, had it been echoed, would have reached her before this.
    await ben.evaluate(() => window.Echo.private("chat.1").whisper("typing", { name: "Ben", typing: false }));
    assert.deepEqual(await logOf(ann, 1), [["typing", { name: "Ben", typing: false }]]);
    await sleep(100);
    assert.equal(await ann.evaluate(() => window.log.length), 1, "the sender received its own whisper");
    assert.equal(await ben.evaluate(() => window.log.length), 1, "the sender received its own whisper");
  } finally {
    await ann.close();
    await ben.close();
  }
});

test("broadcaster 'reverb' (Laravel Reverb's Echo options, no cluster) works against Plexus unchanged", async () => {
  const p = await openPage("ann-session", { broadcaster: "reverb" });
  try {
    assert.match(p.sockets[0], new RegExp(`^ws://127\\.0\\.0\\.1:${server.port}/app/${PUSHER.key}\\?protocol=7&`));
    await p.evaluate(() => new Promise((resolve, reject) => {
      window.Echo.private("chat.1")
        .listen(".message.sent", window.record("message"))
        .subscribed(resolve)
        .error((e) => reject(new Error(JSON.stringify(e))));
    }));
    await sdk.trigger("private-chat.1", "message.sent", { body: "via reverb options" });
    assert.deepEqual(await logOf(p, 1), [["message", { body: "via reverb options" }]]);
  } finally {
    await p.close();
  }
});

// Laravel's `broadcast(new OrderCreated)->toOthers()`: Echo's interceptors send the page's
// socket id as `X-Socket-ID`, Laravel passes it to the SDK's trigger as `socket_id`, and Pusher
// leaves that connection out, as Plexus does (on whichever node it is).
test("toOthers(): an event triggered with the page's socket_id does not reach that page", async () => {
  const sender = await openPage("ann-session");
  const other = await openPage("ben-session");
  try {
    const listen = (p) => p.evaluate(() => new Promise((resolve) => {
      window.Echo.channel("orders-others").listen(".created", window.record("created")).subscribed(resolve);
    }));
    await Promise.all([listen(sender), listen(other)]);
    const socketId = await sender.evaluate(() => window.Echo.socketId());
    await sdk.trigger("orders-others", "created", { id: 1 }, { socket_id: socketId });
    await sdk.trigger("orders-others", "created", { id: 2 });
    assert.deepEqual(await logOf(other, 2), [["created", { id: 1 }], ["created", { id: 2 }]]);
    assert.deepEqual(await logOf(sender, 1), [["created", { id: 2 }]]);
  } finally {
    await sender.close();
    await other.close();
  }
});
