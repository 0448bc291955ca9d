// Shared by the demo pages: navigation, the transport toggle, tokens from the dev endpoint,
// and a phoenix.js Socket that reports which transport it is on. Uses only the official
// phoenix client (window.Phoenix, vendored at /assets/phoenix.min.js).
"use strict";
const Demo = (() => {
  const KEY = "plexus-demo-transport";
  const pages = [["/", "Chat"], ["/demo/roles", "Roles"], ["/demo/live", "Live data"]];
  const forcedLongPoll = () => localStorage.getItem(KEY) === "longpoll";

  /** Fills <nav id="chrome"> with the page links and the LongPoll toggle. */
  function chrome() {
    const nav = document.getElementById("chrome");
    for (const [href, label] of pages) {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = label;
      if (href === location.pathname) a.className = "active";
      nav.append(a);
    }
    const label = document.createElement("label");
    label.className = "toggle";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = "force-longpoll";
    box.checked = forcedLongPoll();
    box.onchange = () => { localStorage.setItem(KEY, box.checked ? "longpoll" : "websocket"); location.reload(); };
    label.append(box, " force LongPoll");
    nav.append(label);
  }

  /** A token for `sub` (and `role`) from the dev profile's endpoint. */
  async function token(sub, role) {
    const q = new URLSearchParams({ sub });
    if (role) q.set("role", role);
    const res = await fetch(`/dev/token?${q}`);
    if (!res.ok) throw new Error("no dev token endpoint (prod profile): paste a token from `plexus token`");
    return (await res.json()).token;
  }

  /** A connected Socket; `status` is the element that says how it is connected. */
  function socket(tok, status) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const opts = { params: { token: tok } };
    if (forcedLongPoll()) opts.transport = Phoenix.LongPoll;
    const s = new Phoenix.Socket(`${scheme}://${location.host}/socket`, opts);
    const set = (text, cls) => { status.textContent = text; status.className = cls || ""; };
    s.onOpen(() => set(`connected (${s.transport === Phoenix.LongPoll ? "LongPoll" : "WebSocket"})`, "ok"));
    s.onError(() => set("connection error, retrying…", "err"));
    s.onClose(() => set("disconnected, retrying…", "err"));
    s.connect();
    return s;
  }

  return { chrome, token, socket, forcedLongPoll };
})();
Demo.chrome();
