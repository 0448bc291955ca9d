// A rolling restart of a Redis cluster behind nginx running deploy/nginx.conf — the file
// docs/deployment.md shows — with phoenix.js clients using the documented recovery recipe.
// Only what cannot be the same here is swapped: node addresses, a plain-HTTP listen port on
// 127.0.0.1 (no certificate), and file paths. Every node is drained (SIGTERM) and restarted in
// turn while a backend publishes through nginx; afterwards every client — WebSocket, and
// LongPoll through the same round-robin upstream (no stickiness) — has every
// acknowledged message exactly once, rejoined within 5 s, and the balancer answered < 1 s of 5xx.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { spawn, execFileSync } from "node:child_process";
import { once } from "node:events";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Socket, LongPoll } from "phoenix";
import WebSocket from "ws";
import { Server, Redis, freePort, token, until, sleep, API_KEY } from "./server.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const NGINX = ["/usr/sbin/nginx", "/usr/bin/nginx"].find((p) => {
  try { execFileSync(p, ["-v"], { stdio: "ignore" }); return true; } catch { return false; }
});

let redis, dir, nginx, lbPort;
const nodes = [];
const sockets = [];

/** deploy/nginx.conf with this test's addresses, port and paths. */
function nginxConf(ports, port, dir) {
  let conf = readFileSync(path.join(root, "deploy/nginx.conf"), "utf8");
  const servers = ports.map((p) => `    server 127.0.0.1:${p} max_fails=0;`).join("\n");
  conf = conf.replace(/(    server 10\.0\.0\.\d+:4000 max_fails=0;\n)+/g, `${servers}\n`);
  conf = conf.replace("listen 443 ssl;", `listen 127.0.0.1:${port};`);
  conf = conf.replace(/^\s*ssl_certificate.*\n/gm, "");
  conf = conf.replace("/var/log/nginx/plexus.access.log", path.join(dir, "access.log"));
  assert.ok(!conf.includes("10.0.0."), "every documented upstream address was replaced");
  return `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${conf}
}
`;
}

before(async () => {
  if (!NGINX) return;
  redis = await Redis.start();
  dir = mkdtempSync(path.join(tmpdir(), "plexus-js-rolling-"));
  const config = path.join(dir, "plexus.toml");
  writeFileSync(config, `
profile = "dev"
broker = "redis"
drain_timeout_secs = 5
[redis]
node_timeout_secs = 2
[[channels]]
topic = "room:*"
presence = true
history_size = 1000
`);
  for (let i = 0; i < 2; i++) nodes.push(await Server.start({ PLEXUS_CONFIG: config, PLEXUS_REDIS_URL: redis.url }));
  lbPort = await freePort();
  const conf = path.join(dir, "nginx.conf");
  writeFileSync(conf, nginxConf(nodes.map((n) => n.port), lbPort, dir));
  execFileSync(NGINX, ["-t", "-q", "-p", dir, "-e", path.join(dir, "error.log"), "-c", conf]);
  nginx = spawn(NGINX, ["-p", dir, "-e", path.join(dir, "error.log"), "-c", conf], { stdio: "ignore" });
  await until(async () => {
    try { return (await fetch(`http://127.0.0.1:${lbPort}/health`)).ok; } catch { return false; }
  }, 10000, "nginx");
});

after(async () => {
  sockets.forEach((s) => s.disconnect());
  if (nginx) { nginx.kill("SIGTERM"); await once(nginx, "exit"); }
  for (const n of nodes) await n.stop();
  if (redis) await redis.stop();
  if (dir && !process.env.PLEXUS_KEEP) rmSync(dir, { recursive: true, force: true });
});

/** A phoenix.js client with the recovery recipe of docs/protocol.md, through nginx. */
function recoveringClient(sub, topic, transport = WebSocket) {
  const socket = new Socket(`ws://127.0.0.1:${lbPort}/socket`, {
    transport,
    params: { token: token(sub) },
  });
  const c = { socket, got: [], joins: [], closes: [], recoveredFalse: 0, last: null };
  const channel = socket.channel(topic, () => ({ recover: c.last }));
  channel.on("msg", (payload, ref) => {
    c.got.push(payload.n);
    if (ref && c.last) c.last.offset = Number(ref);
  });
  socket.onClose(() => c.closes.push(Date.now()));
  channel.join().receive("ok", (resp) => {
    c.joins.push(Date.now());
    if (c.last && resp.recovered === false) c.recoveredFalse++;
    if (!c.last || resp.recovered === false) c.last = { epoch: resp.epoch, offset: resp.offset };
  });
  socket.connect();
  sockets.push(socket);
  return c;
}

test("rolling restart through nginx: no message lost or doubled, rejoined within 5 s, under 1 s of 5xx", { skip: !NGINX && "nginx is not installed" }, async (t) => {
  const topic = "room:rolling";
  const clients = [];
  for (let i = 0; i < 8; i++) clients.push(recoveringClient(`user${i}`, topic));
  // LongPoll clients too, through the same round-robin upstream (no stickiness).
  for (let i = 0; i < 2; i++) clients.push(recoveringClient(`poller${i}`, topic, LongPoll));
  await until(() => clients.every((c) => c.joins.length === 1), 5000, "first joins");

  // Health through the balancer every 50 ms; a backend publishing every 40 ms.
  let running = true, bad = 0, probes = 0;
  const acked = [];
  const health = (async () => {
    while (running) {
      probes++;
      try {
        const r = await fetch(`http://127.0.0.1:${lbPort}/health`);
        if (r.status >= 500) bad++;
      } catch { bad++; }
      await sleep(50);
    }
  })();
  const publisher = (async () => {
    for (let n = 1; running; n++) {
      try {
        const r = await fetch(`http://127.0.0.1:${lbPort}/api/broadcast`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${API_KEY}` },
          body: JSON.stringify({ topic, event: "msg", payload: { n } }),
        });
        if (r.ok) acked.push(n);
      } catch { /* not acknowledged: not expected */ }
      await sleep(40);
    }
  })();

  await sleep(500);
  for (const node of nodes) {
    await node.stop();          // SIGTERM: listener closed, clients closed with 1012
    await node.spawn();         // the same port again
    await sleep(1500);
  }
  running = false;
  await Promise.all([health, publisher]);

  const want = JSON.stringify(acked);
  for (const [i, c] of clients.entries()) {
    const missing = () => acked.filter((n) => !c.got.includes(n));
    await until(() => c.got.length >= acked.length, 5000,
      () => `client ${i}: ${c.got.length} of ${acked.length}, missing ${missing()}, closes ${c.closes.length}, joins ${c.joins.length}`);
    assert.equal(JSON.stringify(c.got), want, `client ${i} got every acknowledged message once, in order`);
    assert.equal(c.recoveredFalse, 0, `client ${i} always recovered`);
    // Each close was followed by a rejoin within 5 s.
    for (const closed of c.closes) {
      assert.ok(c.joins.some((j) => j >= closed && j - closed < 5000), `client ${i} rejoined within 5 s`);
    }
  }
  const closes = clients.reduce((a, c) => a + c.closes.length, 0);
  t.diagnostic(`published ${acked.length} messages, ${closes} client closes, ${bad}/${probes} failed health probes`);
  assert.ok(closes > 0, "the restarts closed clients");
  assert.ok(acked.length > 50, `published ${acked.length}`);
  assert.ok(bad * 50 < 1000, `${bad} failed health probes of ${probes} (≥ 1 s of 5xx)`);
});
