// The official phoenix client (npm phoenix 1.8.16, unmodified) against a real Plexus server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Socket, Presence } from "phoenix";
import WebSocket from "ws";
import { Server, token, until, sleep, join, push } from "./server.mjs";

let server;
const sockets = [];
before(async () => { server = await Server.start(); });
after(async () => {
  sockets.forEach((s) => s.disconnect());
  await server.stop();
});

function connect(sub, opts = {}) {
  const socket = new Socket(server.url, {
    transport: WebSocket,
    params: opts.authToken ? {} : { token: token(sub) },
    authToken: opts.authToken ? token(sub) : undefined,
    reconnectAfterMs: () => 100,
    rejoinAfterMs: () => 100,
    ...opts.socket,
  });
  socket.connect();
  sockets.push(socket);
  return socket;
}

function nextEvent(channel, event) {
  return new Promise((resolve) => {
    const ref = channel.on(event, (payload) => { channel.off(event, ref); resolve(payload); });
  });
}

test("join, push with reply, broadcast to others and not to the sender", async () => {
  const a = connect("alice").channel("room:compat", {});
  const b = connect("bob").channel("room:compat", {});
  await join(a);
  await join(b);
  let echoed = false;
  a.on("new_msg", () => { echoed = true; });
  const got = nextEvent(b, "new_msg");
  const reply = await push(a, "new_msg", { body: "hello" });
  assert.equal(reply.status, "ok");
  assert.deepEqual(await got, { body: "hello" });
  await sleep(200);
  assert.equal(echoed, false, "the sender must not receive its own broadcast");
});

test("broadcasts from the HTTP API reach phoenix.js", async () => {
  const c = connect("carol").channel("room:api", {});
  await join(c);
  const got = nextEvent(c, "announcement");
  await server.broadcast("room:api", "announcement", { text: "from the backend" });
  assert.deepEqual(await got, { text: "from the backend" });
});

test("binary ArrayBuffer pushes arrive as ArrayBuffer broadcasts", async () => {
  const a = connect("alice").channel("room:bin", {});
  const b = connect("bob").channel("room:bin", {});
  await join(a);
  await join(b);
  const got = nextEvent(b, "chunk");
  const bytes = new Uint8Array([0, 1, 2, 253, 254, 255]);
  const reply = await push(a, "chunk", bytes.buffer);
  assert.equal(reply.status, "ok");
  const payload = await got;
  assert.ok(payload instanceof ArrayBuffer, `expected ArrayBuffer, got ${payload?.constructor?.name}`);
  assert.deepEqual(new Uint8Array(payload), bytes);
});

test("leave closes the channel; a denied join reports the reason", async () => {
  const socket = connect("dave");
  const c = socket.channel("room:leave", {});
  await join(c);
  const left = await new Promise((resolve) => c.leave().receive("ok", () => resolve(true)));
  assert.equal(left, true);
  await until(() => c.state === "closed", 2000, "channel closed");

  const denied = socket.channel("private:stuff", {});
  const reason = await new Promise((resolve) => denied.join().receive("error", resolve));
  assert.deepEqual(reason, { reason: "unauthorized", retry: false });
  denied.leave();
});

test("authToken option (Sec-WebSocket-Protocol) authenticates", async () => {
  const c = connect("erin", { authToken: true }).channel("room:authtoken", {});
  await join(c);
  assert.equal((await push(c, "ping", {})).status, "ok");
});

test("a wrong token is refused and the socket does not open", async () => {
  const socket = new Socket(server.url, { transport: WebSocket, params: { token: "nope" }, reconnectAfterMs: () => 60000 });
  let errored = false;
  socket.onError(() => { errored = true; });
  socket.connect();
  sockets.push(socket);
  await until(() => errored, 3000, "connection error");
  assert.equal(socket.isConnected(), false);
});

test("server restart: phoenix.js reconnects and rejoins by itself", async () => {
  const socket = connect("frank");
  const c = socket.channel("room:restart", {});
  await join(c);
  let closeCode = null;
  socket.onClose((e) => { if (closeCode === null) closeCode = e.code; });
  await server.restart();
  assert.equal(closeCode, 1012, "drain must close with 1012");
  await until(() => socket.isConnected() && c.state === "joined", 10000, "rejoin after restart");
  const got = nextEvent(c, "after_restart");
  // The rejoin reply may race the API call; retry until the broadcast lands.
  let payload;
  for (let i = 0; i < 20 && payload === undefined; i++) {
    await server.broadcast("room:restart", "after_restart", { ok: true });
    payload = await Promise.race([got, sleep(250).then(() => undefined)]);
  }
  assert.deepEqual(payload, { ok: true });
});

test("Presence: onSync lists everyone, including JavaScript built-in names, and drops leavers", async () => {
  const watcher = connect("watcher").channel("room:presence", {});
  const presence = new Presence(watcher);
  let names = [];
  presence.onSync(() => { names = presence.list((id) => id).sort(); });
  await join(watcher);
  const others = [];
  for (const sub of ["__proto__", "constructor", "alice"]) {
    const c = connect(sub).channel("room:presence", {});
    await join(c);
    others.push(c);
  }
  await until(() => names.length === 4, 3000, `4 present, got ${JSON.stringify(names)}`);
  assert.deepEqual(names, ["__proto__", "alice", "constructor", "watcher"]);
  // A meta update reaches the list.
  let status;
  presence.onSync(() => {
    names = presence.list((id) => id).sort();
    const alice = presence.list((id, { metas }) => ({ id, metas })).find((p) => p.id === "alice");
    status = alice && alice.metas[0].status;
  });
  const upd = await push(others[2], "presence_update", { status: "away" });
  assert.equal(upd.status, "ok");
  await until(() => status === "away", 3000, "status update");
  await new Promise((resolve) => others[0].leave().receive("ok", resolve));
  await until(() => names.length === 3 && !names.includes("__proto__"), 3000, "leave");
});

test("recovery with stock phoenix.js: params closure + ref of broadcasts", async () => {
  // The recipe from docs/protocol.md.
  const socket = connect("rita");
  let last = null; // {epoch, offset}
  const replies = [];
  const received = [];
  // `recover` (null at first) also asks for offsets in the broadcasts' ref.
  const channel = socket.channel("room:recover", () => ({ recover: last }));
  channel.on("msg", (payload, ref) => {
    received.push(payload.n);
    if (ref && last) last.offset = Number(ref);
  });
  // phoenix.js runs the join's "ok" hook again on every automatic rejoin.
  channel.join().receive("ok", (resp) => {
    replies.push(resp);
    if (!last || resp.recovered === false) last = { epoch: resp.epoch, offset: resp.offset };
  });
  await until(() => replies.length === 1, 3000, "joined");
  await server.broadcast("room:recover", "msg", { n: 1 });
  await until(() => received.length === 1, 3000, "first message");

  socket.disconnect();
  await until(() => !socket.isConnected(), 3000, "disconnected");
  for (let n = 2; n <= 6; n++) await server.broadcast("room:recover", "msg", { n });

  socket.connect(); // phoenix.js rejoins by itself, with the closure's fresh params
  await until(() => replies.length === 2, 5000, "rejoined");
  assert.equal(replies[0].recovered, undefined, "the first join asked for no recovery");
  assert.equal(replies[1].recovered, true);
  await until(() => received.length === 6, 3000, `6 messages, got ${JSON.stringify(received)}`);
  assert.deepEqual(received, [1, 2, 3, 4, 5, 6]);
  assert.equal(last.offset, 6);
});
