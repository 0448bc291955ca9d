// Server-Sent Events with a standard EventSource client (npm eventsource, the WHATWG
// algorithm): broadcasts of allowed topics, refusals, keep-alive, and Last-Event-ID resume.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { EventSource } from "eventsource";
import { Server, token, until, API_KEY } from "./server.mjs";

let server;
const sources = [];
before(async () => { server = await Server.start(); });
after(async () => {
  sources.forEach((s) => s.close());
  await server.stop();
});

function open(url) {
  const es = new EventSource(url);
  sources.push(es);
  return es;
}

test("SSE: broadcasts of every listed topic, join events, refusals", async () => {
  const es = open(`${server.http}/sse?topic=room:sse1&topic=room:sse2&token=${token("sam")}`);
  const joined = [];
  const got = [];
  es.addEventListener("joined", (e) => joined.push(JSON.parse(e.data).topic));
  es.onmessage = (e) => {
    const d = JSON.parse(e.data);
    if (d.event === "news") got.push([d.topic, d.payload.n, d.offset, e.lastEventId]);
  };
  await until(() => joined.length === 2, 3000, "joined both topics");
  assert.deepEqual(joined.sort(), ["room:sse1", "room:sse2"]);
  await server.broadcast("room:sse1", "news", { n: 1 });
  await server.broadcast("room:sse2", "news", { n: 2 });
  await server.broadcast("room:other", "news", { n: 3 });
  await until(() => got.length === 2, 3000, "two broadcasts");
  assert.deepEqual(got.map(([t, n, o]) => [t, n, o]), [["room:sse1", 1, 1], ["room:sse2", 2, 1]]);
  assert.match(got[1][3], /room%3Asse1=.+%3A1&room%3Asse2=.+%3A1/);

  for (const [url, status, reason] of [
    [`${server.http}/sse?topic=secret&token=${token("sam")}`, 403, /unauthorized: secret/],
    [`${server.http}/sse?topic=room:x&token=garbage`, 403, /malformed token/],
    [`${server.http}/sse?token=${token("sam")}`, 400, /at least one topic/],
  ]) {
    const res = await fetch(url);
    assert.equal(res.status, status, url);
    assert.match((await res.json()).error, reason);
  }
});

test("SSE: a dropped stream resumes with Last-Event-ID and misses nothing", async () => {
  const es = open(`${server.http}/sse?topic=room:resume&token=${token("rosa")}`);
  const seen = [];
  let opens = 0;
  es.onopen = () => { opens++; };
  es.onmessage = (e) => {
    const d = JSON.parse(e.data);
    if (d.event === "tick") seen.push(d.payload.n);
  };
  await until(() => opens === 1, 3000, "open");
  await new Promise((r) => setTimeout(r, 100));
  await server.broadcast("room:resume", "tick", { n: 1 });
  await until(() => seen.length === 1, 3000, "first tick");
  // The server drops the stream; while the client waits to reconnect, more is published.
  const res = await fetch(`${server.http}/api/disconnect`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({ sub: "rosa" }),
  });
  assert.deepEqual(await res.json(), { disconnected: 1 });
  for (let n = 2; n <= 5; n++) await server.broadcast("room:resume", "tick", { n });
  await until(() => opens === 2, 6000, "reconnected");
  await server.broadcast("room:resume", "tick", { n: 6 });
  await until(() => seen.length === 6, 3000, `all ticks, got ${JSON.stringify(seen)}`);
  assert.deepEqual(seen, [1, 2, 3, 4, 5, 6]);
});
