// pusher-js as the Pusher suites use it: a client of the Plexus under test, with the app's
// auth endpoints, and waits for its connection and subscriptions.
import { createServer } from "node:http";
import { once } from "node:events";
import Pusher from "pusher-js";
import { PUSHER } from "./server.mjs";

/**
 * A pusher-js client of the server on `port`, authorising channels at `${authBase}/pusher/auth`
 * and signing in at `${authBase}/pusher/user-auth`, both told `user`.
 */
export function pusherClient(port, authBase, user = "someone") {
  return new Pusher(PUSHER.key, {
    wsHost: "127.0.0.1", wsPort: port, forceTLS: false, enabledTransports: ["ws"], cluster: "mt1",
    channelAuthorization: { endpoint: `${authBase}/pusher/auth`, params: { user } },
    userAuthentication: { endpoint: `${authBase}/pusher/user-auth`, params: { user } },
  });
}

/** Resolves with the socket id once `p` is connected (at once if it is). */
export const connected = (p) => new Promise((resolve, reject) => {
  if (p.connection.state === "connected") return resolve(p.connection.socket_id);
  p.connection.bind("connected", () => resolve(p.connection.socket_id));
  p.connection.bind("failed", () => reject(new Error("pusher-js failed to connect")));
});

/** Resolves once `channel` is subscribed; rejects with the `subscription_error` as `data`. */
export const subscribed = (channel) => new Promise((resolve, reject) => {
  if (channel.subscribed) return resolve();
  channel.bind("pusher:subscription_succeeded", resolve);
  channel.bind("pusher:subscription_error", (e) => reject(Object.assign(new Error("subscription_error"), { data: e })));
});

/**
 * The application's auth endpoints, signing with the `pusher` SDK `sdk` as an app does:
 * `/pusher/auth` (pusher-js posts `socket_id`, `channel_name` and the client's `user`:
 * `authorizeChannel`, presence channels as that user) and `/pusher/user-auth` (`socket_id`,
 * `user`: `authenticateUser`). Resolves with the listening server; its base URL is
 * `http://127.0.0.1:${server.address().port}`.
 */
export async function authServer(sdk) {
  const server = createServer(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    const form = new URLSearchParams(body);
    const socketId = form.get("socket_id");
    const user = form.get("user");
    let answer;
    if (req.url === "/pusher/user-auth") {
      answer = sdk.authenticateUser(socketId, { id: user, user_info: { name: user.toUpperCase() } });
    } else {
      const channel = form.get("channel_name");
      answer = channel.startsWith("presence-")
        ? sdk.authorizeChannel(socketId, channel, { user_id: user, user_info: { name: user } })
        : sdk.authorizeChannel(socketId, channel);
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(answer));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return server;
}
