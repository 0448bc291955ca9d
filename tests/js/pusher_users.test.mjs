// pusher-js 8.x (node build) and the `pusher` npm SDK against Plexus in Pusher mode: user
// sign-in (`pusher.signin()` with the SDK's `authenticateUser`), `sendToUser`,
// `terminateUserConnections` (pusher-js is told 4009 and stops), `private-encrypted-` channels
// (the SDK encrypts with its master key, pusher-js decrypts with the shared secret of the
// SDK's `authorizeChannel`), `user_id` in presence client events' metadata, `trigger` with
// `socket_id` (the connection is left out), and the member limit of presence channels.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import PusherServer from "pusher";
import { Server, PUSHER, PUSHER_ENV } from "./server.mjs";
import { pusherClient, connected, subscribed, authServer } from "./pusher_client.mjs";

// pusher-js's node WebSocket (faye-websocket) arms a 30 s close timer when pusher-js closes a
// socket the server has already closed (after 4009); unref'd, it does not hold the test process.
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = (fn, ms, ...args) => {
  const timer = realSetTimeout(fn, ms, ...args);
  if (ms >= 30000) timer.unref?.();
  return timer;
};

const MAX_MEMBERS = 3;
let server;
let auth; // the application: channel authorisation and user authentication
let sdk;

before(async () => {
  server = await Server.start({ ...PUSHER_ENV, PLEXUS_PUSHER_MAX_PRESENCE_MEMBERS: String(MAX_MEMBERS) });
  sdk = new PusherServer({
    appId: PUSHER.appId, key: PUSHER.key, secret: PUSHER.secret,
    host: "127.0.0.1", port: String(server.port), useTLS: false,
    encryptionMasterKeyBase64: randomBytes(32).toString("base64"),
  });
  auth = await authServer(sdk);
});

after(async () => {
  auth?.close();
  await server?.stop();
});

const next = (emitter, event) => new Promise((resolve) => {
  const handler = (data, metadata) => { emitter.unbind(event, handler); resolve({ data, metadata }); };
  emitter.bind(event, handler);
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Signs in and waits until the user's channel is subscribed (events sent to the user arrive). */
async function signedIn(p) {
  await connected(p);
  p.signin();
  await p.user.signinDonePromise;
  assert.ok(p.user.user_data, "signed in");
  await subscribed(p.user.serverToUserChannel);
}

const client = (user) => pusherClient(server.port, `http://127.0.0.1:${auth.address().port}`, user);

test("signin: sendToUser reaches every connection of the user; terminateUserConnections closes them with 4009", async () => {
  const ann1 = client("ann");
  const ann2 = client("ann");
  const bob = client("bob");
  try {
    await Promise.all([signedIn(ann1), signedIn(ann2), signedIn(bob)]);
    assert.equal(ann1.user.user_data.id, "ann");
    let bobGot = 0;
    bob.user.bind("note", () => { bobGot += 1; });
    const got = [next(ann1.user, "note"), next(ann2.user, "note")];
    await sdk.sendToUser("ann", "note", { n: 1 });
    for (const g of await Promise.all(got)) assert.deepEqual(g.data, { n: 1 });

    const errors = [ann1, ann2].map((p) => next(p.connection, "error"));
    const states = [];
    ann1.connection.bind("state_change", (s) => states.push(s.current));
    await sdk.terminateUserConnections("ann");
    for (const { data: e } of await Promise.all(errors)) {
      assert.equal(e.type, "PusherError", JSON.stringify(e));
      assert.equal(e.data.code, 4009, JSON.stringify(e));
    }
    // 4009 is "refused": pusher-js does not reconnect.
    await sleep(1500);
    assert.equal(ann1.connection.state, "disconnected", states.join(","));
    assert.ok(!states.includes("connecting"), states.join(","));
    assert.equal(bob.connection.state, "connected");
    assert.equal(bobGot, 0);
  } finally {
    for (const p of [ann1, ann2, bob]) p.disconnect();
  }
});

test("private-encrypted- channels: the SDK encrypts, pusher-js decrypts, the server relays", async () => {
  const p = client("ann");
  try {
    await connected(p);
    const ch = p.subscribe("private-encrypted-vault");
    await subscribed(ch);
    const got = next(ch, "secret");
    await sdk.trigger("private-encrypted-vault", "secret", { msg: "only for the clients" });
    assert.deepEqual((await got).data, { msg: "only for the clients" });
  } finally {
    p.disconnect();
  }
});

test("presence client events carry the sender's user_id as metadata", async () => {
  const a = client("ann");
  const b = client("bob");
  try {
    await Promise.all([connected(a), connected(b)]);
    const ca = a.subscribe("presence-team");
    await subscribed(ca);
    const cb = b.subscribe("presence-team");
    await subscribed(cb);
    const got = next(cb, "client-wave");
    assert.equal(ca.trigger("client-wave", { hi: true }), true);
    const { data, metadata } = await got;
    assert.deepEqual(data, { hi: true });
    assert.equal(metadata.user_id, "ann");
  } finally {
    a.disconnect();
    b.disconnect();
  }
});

test("trigger with socket_id leaves that connection out", async () => {
  const a = client("ann");
  const b = client("bob");
  try {
    const [aId] = await Promise.all([connected(a), connected(b)]);
    const ca = a.subscribe("orders");
    const cb = b.subscribe("orders");
    await Promise.all([subscribed(ca), subscribed(cb)]);
    const atA = [];
    const atB = [];
    ca.bind("created", (d) => atA.push(d.id));
    cb.bind("created", (d) => atB.push(d.id));
    await sdk.trigger("orders", "created", { id: 1 }, { socket_id: aId });
    await sdk.trigger("orders", "created", { id: 2 });
    for (let i = 0; i < 50 && (atA.length < 1 || atB.length < 2); i++) await sleep(20);
    assert.deepEqual(atB, [1, 2]);
    assert.deepEqual(atA, [2]);
  } finally {
    a.disconnect();
    b.disconnect();
  }
});

test(`presence channels hold ${MAX_MEMBERS} members: the next user is refused with LimitReached`, async () => {
  const users = ["u1", "u2", "u3"].map(client);
  const late = client("u4");
  const again = client("u1");
  try {
    for (const p of users) {
      await connected(p);
      await subscribed(p.subscribe("presence-full"));
    }
    await connected(late);
    await assert.rejects(
      subscribed(late.subscribe("presence-full")),
      (e) => e.data?.type === "LimitReached" && e.data?.status === 4100,
    );
    // A member's second connection is no new member.
    await connected(again);
    const ch = again.subscribe("presence-full");
    await subscribed(ch);
    assert.equal(ch.members.count, MAX_MEMBERS);
  } finally {
    for (const p of [...users, late, again]) p.disconnect();
  }
});

test("subscription counts: pusher-js's channel.subscriptionCount follows the channel's subscribers", async () => {
  const a = client("ann");
  const b = client("bob");
  try {
    await Promise.all([connected(a), connected(b)]);
    const ca = a.subscribe("count-me");
    await subscribed(ca);
    const counts = [];
    ca.bind("pusher:subscription_count", (d) => counts.push(d.subscription_count));
    await subscribed(b.subscribe("count-me"));
    for (let i = 0; i < 100 && !counts.includes(2); i++) await sleep(50);
    assert.equal(ca.subscriptionCount, 2, JSON.stringify(counts));
    b.unsubscribe("count-me");
    for (let i = 0; i < 100 && counts.at(-1) !== 1; i++) await sleep(50);
    assert.equal(ca.subscriptionCount, 1, JSON.stringify(counts));
  } finally {
    a.disconnect();
    b.disconnect();
  }
});
