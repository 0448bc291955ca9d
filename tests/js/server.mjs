// Starts a real Plexus binary for the compatibility tests and offers small helpers.
import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:net";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = process.env.PLEXUS_BIN || path.join(root, "target/debug/plexus");
export const SECRET = "compat-secret-0123456789abcdef";
export const API_KEY = "compat-api-key-0123456789";

export async function freePort() {
  const srv = createServer();
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const { port } = srv.address();
  srv.close();
  await once(srv, "close");
  return port;
}

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** An HS256 JWT signed with the test secret. */
export function token(sub, { roles = [], ttl = 3600, name } = {}) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + ttl, roles };
  if (name) claims.name = name;
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", SECRET).update(`${header}.${body}`).digest("base64url");
  return `${header}.${body}.${sig}`;
}

/** Supabase's anon key, signed with the test secret: `role: anon`, no `sub`. */
export function anonKey({ ttl = 3600 } = {}) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { iss: "supabase", role: "anon", exp: Math.floor(Date.now() / 1000) + ttl };
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", SECRET).update(`${header}.${body}`).digest("base64url");
  return `${header}.${body}.${sig}`;
}

/** Pusher mode's app (`Server.start({...PUSHER_ENV})`): id, key and secret. */
export const PUSHER = { appId: "4242", key: "compat-pusher-key", secret: "compat-pusher-secret-0123456789" };
export const PUSHER_ENV = {
  PLEXUS_PUSHER_APP_ID: PUSHER.appId,
  PLEXUS_PUSHER_KEY: PUSHER.key,
  PLEXUS_PUSHER_SECRET: PUSHER.secret,
};

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `fn()` is truthy (polling), or throws after `ms`. */
export async function until(fn, ms = 5000, what = "condition") {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await fn();
    if (v) return v;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${typeof what === "function" ? what() : what}`);
}

/** Joins a phoenix.js (or phoenix-channels) channel: resolves with the reply, rejects on error. */
export function join(channel) {
  return new Promise((resolve, reject) => {
    channel.join()
      .receive("ok", resolve)
      .receive("error", (r) => reject(new Error(`join error: ${JSON.stringify(r)}`)))
      .receive("timeout", () => reject(new Error("join timeout")));
  });
}

/** Pushes an event: resolves with `{status, response}` (status ok, error or timeout). */
export function push(channel, event, payload) {
  return new Promise((resolve) => {
    channel.push(event, payload)
      .receive("ok", (r) => resolve({ status: "ok", response: r }))
      .receive("error", (r) => resolve({ status: "error", response: r }))
      .receive("timeout", () => resolve({ status: "timeout" }));
  });
}

export class Server {
  constructor(port, env) {
    this.port = port;
    this.env = env;
    this.log = "";
  }

  static async start(env = {}, { tls = false } = {}) {
    const s = new Server(await freePort(), env);
    s.tls = tls;
    await s.spawn();
    return s;
  }

  get url() { return `${this.tls ? "wss" : "ws"}://localhost:${this.port}/socket`; }
  get http() { return `http://127.0.0.1:${this.port}`; }

  async spawn() {
    this.proc = spawn(BIN, [], {
      env: {
        PATH: process.env.PATH,
        PLEXUS_LISTEN: `127.0.0.1:${this.port}`,
        PLEXUS_JWT_SECRET: SECRET,
        PLEXUS_API_KEY: API_KEY,
        ...this.env,
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.proc.stderr.on("data", (d) => { this.log += d.toString(); });
    this.exited = once(this.proc, "exit");
    await until(async () => {
      if (this.tls) return this.log.includes("listening on https://");
      try { return (await fetch(`${this.http}/health`)).ok; } catch { return false; }
    }, 15000, `plexus on port ${this.port}`);
  }

  async stop(signal = "SIGTERM") {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
    if (process.env.PLEXUS_TEST_LOG) console.error(this.log);
  }

  async restart() {
    await this.stop();
    await this.spawn();
  }

  async broadcast(topic, event, payload) {
    const res = await fetch(`${this.http}/api/broadcast`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${API_KEY}` },
      body: JSON.stringify({ topic, event, payload }),
    });
    if (!res.ok) throw new Error(`broadcast failed: ${res.status} ${await res.text()}`);
  }
}

/** A throwaway self-signed certificate for localhost (openssl CLI). */
export function selfSignedCert(dir) {
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], { stdio: "ignore" });
  return { cert, key };
}

/** A private redis-server on a free port (stopped by stop()). */
export class Redis {
  static async start() {
    const r = new Redis();
    r.port = await freePort();
    r.proc = spawn("redis-server", ["--port", String(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
    r.exited = once(r.proc, "exit");
    const net = await import("node:net");
    await until(() => new Promise((resolve) => {
      const s = net.connect(r.port, "127.0.0.1", () => { s.destroy(); resolve(true); });
      s.on("error", () => resolve(false));
    }), 10000, "redis-server");
    return r;
  }
  get url() { return `redis://127.0.0.1:${this.port}`; }
  async stop() { this.proc.kill("SIGKILL"); await this.exited; }
}

/**
 * A TCP load balancer for the tests: each new connection goes to the next backend (round
 * robin, or by client address when sticky) that accepts a TCP connection.
 */
export async function balancer(backends, { sticky = false } = {}) {
  const net = await import("node:net");
  let next = 0;
  // sticky: like nginx ip_hash, a client address always goes to the same backend.
  const hash = (s) => [...s].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7);
  const server = net.createServer((client) => {
    client.pause();
    const start = sticky ? hash(client.remoteAddress || "") : next++;
    const tryBackend = (attempt) => {
      if (attempt >= backends.length) { client.destroy(); return; }
      const port = backends[(start + attempt) % backends.length];
      const upstream = net.connect(port, "127.0.0.1");
      upstream.once("connect", () => {
        client.pipe(upstream); upstream.pipe(client); client.resume();
        const close = () => { client.destroy(); upstream.destroy(); };
        client.on("error", close); upstream.on("error", close); client.on("close", close); upstream.on("close", close);
      });
      upstream.once("error", () => tryBackend(attempt + 1));
    };
    tryBackend(0);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { port: server.address().port, close: () => server.close() };
}
