// Plexus admin console: plain JS, no build step. Everything shown is fetched from
// /admin/api/* with the session token (sessionStorage, sent as Authorization: Bearer).
// Text from the server is always set with textContent, never parsed as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const KEY = "plexus-admin-token";
let token = sessionStorage.getItem(KEY);
let timers = [];
let tail = null; // AbortController of the open live tail

async function api(path, opts = {}) {
  const res = await fetch(path, {
    ...opts,
    headers: { ...(opts.body ? { "content-type": "application/json" } : {}), authorization: `Bearer ${token}` },
  });
  if (res.status === 401) { signOut("Session expired: sign in again."); throw new Error("signed out"); }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function signOut(message) {
  token = null;
  sessionStorage.removeItem(KEY);
  timers.forEach(clearInterval);
  timers = [];
  stopTail();
  $("console").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("whoami").textContent = "";
  $("signin-error").textContent = message || "";
}

$("signin").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("signin-error").textContent = "";
  const res = await fetch("/admin/api/session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ secret: $("secret").value }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) { $("signin-error").textContent = `Refused: ${body.error || res.status}`; return; }
  token = body.token;
  sessionStorage.setItem(KEY, token);
  $("secret").value = "";
  start();
});

$("signout").addEventListener("click", () => signOut());

function start() {
  $("signin").hidden = true;
  $("console").hidden = false;
  $("signout").hidden = false;
  refreshOverview(); refreshTopics(); refreshConfig();
  timers.push(setInterval(refreshOverview, 2000), setInterval(refreshTopics, 3000));
}

const fmtUptime = (s) => s >= 3600 ? `${Math.floor(s / 3600)}h ${Math.floor(s % 3600 / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;

async function refreshOverview() {
  let o;
  try { o = await api("/admin/api/overview"); } catch (e) { return; }
  $("whoami").textContent = `signed in · node ${o.this_node}`;
  const tbody = $("nodes").tBodies[0];
  tbody.replaceChildren(...o.nodes.map((n) => {
    const tr = el("tr");
    tr.dataset.node = n.id;
    if (n.error) {
      tr.append(el("td", n.id), el("td", `unreachable: ${n.error}`, "bad"));
      return tr;
    }
    const health = n.draining ? "draining" : n.broker_up ? "ok" : "broker down";
    tr.append(el("td", n.id + (n.id === o.this_node ? " (this)" : "")), el("td", health, health === "ok" ? "ok" : "bad"),
      el("td", String(n.connections)), el("td", String(n.transports.websocket)), el("td", String(n.transports.longpoll)),
      el("td", String(n.transports.sse)), el("td", String(n.topics)), el("td", fmtUptime(n.uptime_secs)));
    const td = el("td");
    if (!n.draining) {
      const b = el("button", "Drain", "small");
      b.onclick = async () => {
        if (!confirm(`Drain node ${n.id}? It refuses new connections and closes its live ones (1012).`)) return;
        try { await api("/admin/api/drain", { method: "POST", body: JSON.stringify({ node: n.id }) }); refreshOverview(); }
        catch (e) { alert(`Drain failed: ${e.message}`); }
      };
      td.append(b);
    }
    tr.append(td);
    return tr;
  }));
  const s = o.series.samples;
  chart($("chart-connections"), s, [{ key: "connections", color: "#2f5bd3" }]);
  chart($("chart-messages"), s, [{ key: "messages_in_per_sec", color: "#2f5bd3" }, { key: "broadcasts_per_sec", color: "#d9822b" }]);
}

/** A small line chart on a canvas: x = time, y = 0..max of the series. */
function chart(canvas, samples, lines) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, h = canvas.clientHeight || 180;
  if (canvas.width !== w * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 40, r: 8, t: 8, b: 18 };
  const max = Math.max(1, ...samples.flatMap((p) => lines.map((l) => p[l.key])));
  const now = Date.now(), span = 5 * 60 * 1000;
  const x = (t) => pad.l + (w - pad.l - pad.r) * (1 - (now - t) / span);
  const y = (v) => h - pad.b - (h - pad.t - pad.b) * (v / max);
  g.strokeStyle = "#e3e7ec"; g.fillStyle = "#6b7482"; g.font = "11px system-ui"; g.lineWidth = 1;
  for (const v of [0, max / 2, max]) {
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.stroke();
    g.fillText(v >= 10 ? Math.round(v) : v.toFixed(1).replace(/\.0$/, ""), 4, y(v) + 4);
  }
  g.fillText("-5 min", pad.l, h - 4); g.fillText("now", w - pad.r - 22, h - 4);
  for (const l of lines) {
    g.strokeStyle = l.color; g.lineWidth = 2; g.beginPath();
    samples.forEach((p, i) => { const px = x(p.t), py = y(p[l.key]); i ? g.lineTo(px, py) : g.moveTo(px, py); });
    g.stroke();
  }
  canvas.dataset.points = String(samples.length);
  canvas.dataset.max = String(max);
}

async function refreshTopics() {
  let t;
  try { t = await api("/admin/api/topics"); } catch (e) { return; }
  $("topics-empty").hidden = t.topics.length > 0;
  $("topics").tBodies[0].replaceChildren(...t.topics.map(({ topic, subscribers }) => {
    const tr = el("tr");
    tr.dataset.topic = topic;
    const actions = el("td");
    const p = el("button", "presence", "small");
    p.onclick = () => showPresence(topic);
    const tl = el("button", "tail", "small");
    tl.onclick = () => { $("tail-topic").value = topic; openTail(topic); };
    actions.append(p, " ", tl);
    tr.append(el("td", topic), el("td", String(subscribers)), actions);
    return tr;
  }));
}

async function showPresence(topic) {
  const r = await api(`/admin/api/topics/${encodeURIComponent(topic)}/presence`);
  $("presence-box").hidden = false;
  $("presence-topic").textContent = topic;
  const entries = Object.entries(r.presence || {});
  $("presence").replaceChildren(...(entries.length ? entries.map(([key, { metas }]) =>
    el("li", `${key} (${metas.length}): ${metas.map((m) => JSON.stringify(m)).join(", ")}`)) : [el("li", "nobody tracked", "muted")]));
}

async function refreshConfig() {
  try { $("config").textContent = JSON.stringify(await api("/admin/api/config"), null, 2); } catch (e) { /* signed out */ }
}

function stopTail() {
  if (tail) tail.abort();
  tail = null;
  $("tail-stop").hidden = true;
  $("tail-status").textContent = "Not tailing.";
}

async function openTail(topic) {
  stopTail();
  const ctl = new AbortController();
  tail = ctl;
  $("tail-log").replaceChildren();
  $("tail-stop").hidden = false;
  $("tail-status").textContent = `Opening ${topic}…`;
  try {
    const res = await fetch(`/admin/api/tail?topic=${encodeURIComponent(topic)}`, { headers: { authorization: `Bearer ${token}` }, signal: ctl.signal });
    if (!res.ok) { const b = await res.json().catch(() => ({})); throw new Error(b.error || `HTTP ${res.status}`); }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        onTailEvent(topic, block);
      }
    }
    if (tail === ctl) $("tail-status").textContent = `Tail of ${topic} ended.`;
  } catch (e) {
    if (tail === ctl && e.name !== "AbortError") $("tail-status").textContent = `Tail failed: ${e.message}`;
  }
}

function onTailEvent(topic, block) {
  let event = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) event = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (!data) return;
  if (event === "subscribed") { $("tail-status").textContent = `Tailing ${topic}: events appear as they are broadcast.`; return; }
  if (event === "closed") { $("tail-status").textContent = `Tail of ${topic} closed by the server: ${data}`; return; }
  const m = JSON.parse(data);
  const time = new Date().toLocaleTimeString();
  const payload = m.payload !== undefined ? JSON.stringify(m.payload) : `<binary ${m.payload_base64.length} b64>`;
  const li = el("li", `${time} ${m.event}${m.offset != null ? ` #${m.offset}` : ""} ${payload}`);
  const log = $("tail-log");
  log.append(li);
  while (log.children.length > 200) log.firstChild.remove();
  log.scrollTop = log.scrollHeight;
}

$("tail-form").addEventListener("submit", (e) => { e.preventDefault(); openTail($("tail-topic").value.trim()); });
$("tail-stop").addEventListener("click", stopTail);

$("broadcast").addEventListener("submit", async (e) => {
  e.preventDefault();
  let payload;
  try { payload = JSON.parse($("bc-payload").value || "{}"); } catch (err) { $("bc-result").textContent = `Payload is not JSON: ${err.message}`; return; }
  try {
    const r = await api("/admin/api/broadcast", { method: "POST", body: JSON.stringify({ topic: $("bc-topic").value, event: $("bc-event").value, payload }) });
    $("bc-result").textContent = `Broadcast sent${r.offset != null ? ` (offset ${r.offset})` : ""}.`;
  } catch (err) { $("bc-result").textContent = `Refused: ${err.message}`; }
});

$("disconnect").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const r = await api("/admin/api/disconnect", { method: "POST", body: JSON.stringify({ sub: $("dc-sub").value }) });
    $("dc-result").textContent = `Disconnected ${r.disconnected} connection(s) on this node; the other nodes closed theirs.`;
  } catch (err) { $("dc-result").textContent = `Refused: ${err.message}`; }
});

if (token) {
  fetch("/admin/api/session", { headers: { authorization: `Bearer ${token}` } })
    .then((r) => (r.ok ? start() : signOut()))
    .catch(() => signOut());
}
