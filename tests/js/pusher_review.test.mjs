// Review of Pusher mode (issue 20), through pusher-js 8.x and the `pusher` npm SDK: defects
// found by the review, each a test that fails on the code it was written against.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import PusherServer from "pusher";
import { Server, PUSHER, PUSHER_ENV } from "./server.mjs";
import { pusherClient, connected, subscribed, authServer } from "./pusher_client.mjs";

let server;
let auth; // the application: channel authorisation and user authentication
let sdk;

before(async () => {
  server = await Server.start({ ...PUSHER_ENV });
  sdk = new PusherServer({
    appId: PUSHER.appId, key: PUSHER.key, secret: PUSHER.secret,
    host: "127.0.0.1", port: String(server.port), useTLS: false,
  });
  auth = await authServer(sdk);
});

after(async () => {
  auth?.close();
  await server?.stop();
});

const within = (ms, promise, what) => Promise.race([
  promise,
  new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)),
]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The usual app: subscribe, then `pusher.signin()` (Echo: `connector.signin()`). pusher-js
// sends its subscriptions on `connected` and the signin after the user-auth round trip, so
// the channels are subscribed first; on main the sign-in departs them server-side and
// pusher-js, told nothing, waits for events that never come.
const client = (user) => pusherClient(server.port, `http://127.0.0.1:${auth.address().port}`, user);

test("channels subscribed before pusher.signin() still get events after it", async () => {
  const ann = client("ann");
  try {
    const pub = ann.subscribe("orders");
    const priv = ann.subscribe("private-orders");
    ann.signin();
    await within(5000, Promise.all([subscribed(pub), subscribed(priv)]), "subscriptions");
    await within(5000, ann.user.signinDonePromise, "signin");
    await within(5000, subscribed(ann.user.serverToUserChannel), "the user's channel");
    await sleep(200);
    for (const ch of [pub, priv]) {
      const got = new Promise((resolve) => ch.bind("shipped", resolve));
      await sdk.trigger(ch.name, "shipped", { n: 1 });
      assert.deepEqual(await within(3000, got, `an event on ${ch.name}`), { n: 1 });
    }
  } finally {
    ann.disconnect();
  }
});

// The same on a presence channel: the other members are told the signed-in user left while
// its pusher-js still shows it subscribed.
test("a presence member that signs in is not reported gone to the others", async () => {
  const bob = client("bob");
  const ann = client("ann");
  try {
    const bobRoom = bob.subscribe("presence-room");
    await within(5000, subscribed(bobRoom), "bob's subscription");
    const annRoom = ann.subscribe("presence-room");
    await within(5000, subscribed(annRoom), "ann's subscription");
    await sleep(300);
    const removed = [];
    bobRoom.bind("pusher:member_removed", (m) => removed.push(m.id));
    ann.signin();
    await within(5000, ann.user.signinDonePromise, "signin");
    await sleep(1000);
    assert.equal(annRoom.subscribed, true, "ann's pusher-js believes it is subscribed");
    assert.deepEqual(removed, [], "bob was told ann left presence-room, though ann did not");
    assert.equal(bobRoom.members.count, 2);
  } finally {
    ann.disconnect();
    bob.disconnect();
  }
});
