"""Supabase's Python client, `realtime` 2.34.1 (PyPI, unmodified, speaks Phoenix V1), against a
real Plexus with `[supabase] enabled = true`: broadcast both ways (client to client, and the
HTTP API to clients), presence track/sync/untrack, and set_auth (also from the anon key to a
user, once).

Run by scripts/test inside a venv made from tests/py/requirements.txt; PLEXUS_BIN names the
server binary (default target/debug/plexus).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("PLEXUS_BIN", os.path.join(ROOT, "target", "debug", "plexus"))
SECRET = "py-secret-0123456789abcdef"
API_KEY = "py-api-key-0123456789"
CONFIG = """
profile = "dev"
[supabase]
enabled = true
[[channels]]
topic = "*"
presence = true
"""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(sub: str, ttl: int = 3600) -> str:
    """An HS256 JWT signed with the test secret."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": sub, "exp": int(time.time()) + ttl}).encode())
    sig = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64url(sig)}"


def anon_key(ttl: int = 3600) -> str:
    """Supabase's anon key, signed with the test secret: `role: anon`, no `sub`."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"iss": "supabase", "role": "anon", "exp": int(time.time()) + ttl}
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(check, what: str, timeout: float = 5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Plexus:
    def __init__(self, config_text: str = CONFIG, extra_env: dict | None = None):
        self.dir = tempfile.TemporaryDirectory(prefix="plexus-py-")
        config = os.path.join(self.dir.name, "plexus.toml")
        with open(config, "w") as f:
            f.write(config_text)
        self.port = free_port()
        self.log = open(os.path.join(self.dir.name, "plexus.log"), "w+")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PLEXUS_CONFIG": config,
            "PLEXUS_LISTEN": f"127.0.0.1:{self.port}",
            "PLEXUS_JWT_SECRET": SECRET,
            "PLEXUS_API_KEY": API_KEY,
            **(extra_env or {}),
        }
        self.proc = subprocess.Popen([BIN], env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        end = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"plexus did not start: {self.read_log()}")
                time.sleep(0.05)

    def read_log(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def broadcast(self, topic: str, event: str, payload) -> None:
        body = json.dumps({"topic": topic, "event": event, "payload": payload}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/broadcast",
            data=body,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
        self.dir.cleanup()


class SupabaseRealtimePy(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Plexus()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def client(self, sub: str | None) -> AsyncRealtimeClient:
        """A client of user `sub`, or with the anon key for `None`."""
        url = f"ws://localhost:{self.server.port}/realtime/v1"
        key = anon_key() if sub is None else token(sub)
        return AsyncRealtimeClient(url, token=key, hb_interval=1)

    async def subscribe(self, channel) -> list:
        states = []
        await channel.subscribe(lambda status, err: states.append((status, err)))
        self.assertEqual(states[-1][0], RealtimeSubscribeStates.SUBSCRIBED, states)
        return states

    async def test_broadcast_both_ways(self):
        a, b = self.client("py-a"), self.client("py-b")
        try:
            ca = a.channel("pyroom", {"config": {"broadcast": {"self": True}}})
            cb = b.channel("pyroom")
            got_a, got_b = [], []
            ca.on_broadcast("msg", got_a.append)
            cb.on_broadcast("msg", got_b.append)
            await self.subscribe(ca)
            await self.subscribe(cb)
            # Three senders on three connections: each send waits for the previous one to
            # arrive, so the order asserted below is the order they were sent in.
            await ca.send_broadcast("msg", {"n": 1})
            await until(lambda: len(got_a) == 1, "first broadcast")
            await cb.send_broadcast("msg", {"n": 2})
            await until(lambda: len(got_a) == 2, "second broadcast")
            self.server.broadcast("realtime:pyroom", "msg", {"n": 3})
            await until(lambda: len(got_a) == 3 and len(got_b) == 2, "broadcasts")
            self.assertEqual([m["payload"]["n"] for m in got_a], [1, 2, 3])  # self: true
            self.assertEqual([m["payload"]["n"] for m in got_b], [1, 3])  # not its own
            self.assertEqual(got_b[0]["event"], "msg")
            # Leave: the server's ok and phx_close end in CLOSED.
            closed = []
            cb.subscribe_callback = lambda status, err: closed.append(status)
            await cb.unsubscribe()
            await until(lambda: RealtimeSubscribeStates.CLOSED in closed, "closed after leave")
        finally:
            await a.close()
            await b.close()

    async def test_presence_track_sync_untrack(self):
        a, b = self.client("py-c"), self.client("py-d")
        try:
            ca = a.channel("pypresence", {"config": {"presence": {"key": "carol"}}})
            cb = b.channel("pypresence")
            syncs = []
            cb.on_presence_sync(lambda: syncs.append(dict(cb.presence_state())))
            await self.subscribe(ca)
            await self.subscribe(cb)
            await ca.track({"status": "online"})
            state = await until(lambda: cb.presence_state().get("carol"), "carol tracked")
            self.assertEqual(state[0]["status"], "online")
            self.assertIn("presence_ref", state[0])
            self.assertTrue(syncs, "on_presence_sync ran")
            await ca.untrack()
            await until(lambda: "carol" not in cb.presence_state(), "carol untracked")
        finally:
            await a.close()
            await b.close()

    async def test_set_auth(self):
        c = self.client("py-e")
        try:
            ch = c.channel("pyauth")
            got = []
            ch.on_broadcast("x", got.append)
            states = await self.subscribe(ch)
            # A fresh token of the same user: adopted silently, the channel stays joined.
            await c.set_auth(token("py-e", ttl=7200))
            self.server.broadcast("realtime:pyauth", "x", {"still": "joined"})
            await until(lambda: got, "broadcast after set_auth")
            # Another user's token: Supabase's system error, then the channel closes.
            await c.set_auth(token("someone-else"))
            await until(
                lambda: any(s == RealtimeSubscribeStates.CLOSED for s, _ in states),
                "channel closed",
            )
            errors = [e for s, e in states if s == RealtimeSubscribeStates.CHANNEL_ERROR]
            self.assertTrue(errors and "sub" in str(errors[0]), states)
        finally:
            await c.close()

    async def test_anon_key_then_set_auth_signs_in_once(self):
        c, w = self.client(None), self.client("py-w")
        try:
            ch = c.channel("pyanon", {"config": {"presence": {"key": "fay"}}})
            cw = w.channel("pyanon")
            states = await self.subscribe(ch)
            await self.subscribe(cw)
            # Anonymous: the server's sub in the meta is null, whatever the client says.
            await ch.track({"sub": "py-f"})
            state = await until(lambda: cw.presence_state().get("fay"), "anonymous track")
            self.assertIsNone(state[0]["sub"])
            # Signed in: the channel stays joined, the next track carries the user's sub.
            await c.set_auth(token("py-f"))
            await ch.track({"online": True})
            await until(
                lambda: (cw.presence_state().get("fay") or [{}])[0].get("sub") == "py-f",
                "signed-in track",
            )
            # Only once: another user's token closes the channel with the reason.
            await c.set_auth(token("py-other"))
            await until(
                lambda: any(s == RealtimeSubscribeStates.CLOSED for s, _ in states),
                "channel closed",
            )
            errors = [e for s, e in states if s == RealtimeSubscribeStates.CHANNEL_ERROR]
            self.assertTrue(errors and "same sub" in str(errors[0]), states)
        finally:
            await c.close()
            await w.close()


if __name__ == "__main__":
    unittest.main()
