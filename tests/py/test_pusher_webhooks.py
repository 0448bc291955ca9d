"""Pusher-format webhooks (`PLEXUS_PUSHER_WEBHOOK_URL`) verified by the official `pusher`
PyPI SDK (3.3.4, unmodified): `validate_webhook(key, signature, body)` accepts every request
Plexus sends (and refuses a tampered body or another secret's), with `channel_occupied`,
`channel_vacated`, `cache_miss` and `client_event` as Pusher documents them. The clients are
raw Pusher protocol 7 connections (`websockets`); the SDK also publishes the event a cache
channel then keeps.

Uses the server harness of test_supabase.py, with Pusher mode's environment.
"""

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
import unittest

import pusher
import websockets

from test_supabase import Plexus, until

APP_ID, KEY, SECRET = "4242", "py-pusher-key", "py-pusher-secret-0123456789"


class Hooks(http.server.BaseHTTPRequestHandler):
    """Records each webhook request: its headers and raw body."""

    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hooks.received.append((self.headers, body))  # case-insensitive
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def sign(socket_id: str, channel: str) -> str:
    mac = hmac.new(SECRET.encode(), f"{socket_id}:{channel}".encode(), hashlib.sha256)
    return f"{KEY}:{mac.hexdigest()}"


class PusherWebhooks(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.hooks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
        threading.Thread(target=cls.hooks.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{cls.hooks.server_address[1]}/pusher/webhooks"
        cls.server = Plexus(
            'profile = "dev"\n',
            {
                "PLEXUS_PUSHER_APP_ID": APP_ID,
                "PLEXUS_PUSHER_KEY": KEY,
                "PLEXUS_PUSHER_SECRET": SECRET,
                "PLEXUS_PUSHER_WEBHOOK_URL": url,
            },
        )

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.hooks.shutdown()

    def sdk(self, secret=SECRET) -> pusher.Pusher:
        return pusher.Pusher(
            app_id=APP_ID, key=KEY, secret=secret, host="127.0.0.1", port=self.server.port, ssl=False
        )

    def events(self) -> list:
        """Every event received, each request validated by the SDK."""
        out = []
        for headers, body in Hooks.received:
            self.assertEqual(headers["Content-Type"], "application/json")
            data = self.sdk().validate_webhook(
                headers["X-Pusher-Key"], headers["X-Pusher-Signature"], body.decode()
            )
            self.assertIsNotNone(data, body)
            out.extend(data["events"])
        return out

    async def connect(self):
        ws = await websockets.connect(
            f"ws://127.0.0.1:{self.server.port}/app/{KEY}?protocol=7&client=py&version=1.0"
        )
        hello = json.loads(await ws.recv())
        self.assertEqual(hello["event"], "pusher:connection_established")
        return ws, json.loads(hello["data"])["socket_id"]

    async def subscribe(self, ws, channel, auth=None) -> dict:
        data = {"channel": channel}
        if auth:
            data["auth"] = auth
        await ws.send(json.dumps({"event": "pusher:subscribe", "data": data}))
        return json.loads(await asyncio.wait_for(ws.recv(), 5))

    async def test_webhooks_validate_with_the_sdk(self):
        ws, socket_id = await self.connect()
        try:
            ok = await self.subscribe(ws, "py-orders")
            self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
            ok = await self.subscribe(ws, "cache-py-empty")
            self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
            miss = json.loads(await asyncio.wait_for(ws.recv(), 5))
            self.assertEqual(miss, {"event": "pusher:cache_miss", "channel": "cache-py-empty"})
            ch = "private-py"
            ok = await self.subscribe(ws, ch, sign(socket_id, ch))
            self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
            await ws.send(json.dumps({"event": "client-ping", "channel": ch, "data": {"n": 1}}))
            await until(
                lambda: any(e["name"] == "client_event" for e in self.events()), "client_event"
            )
        finally:
            await ws.close()
        left = {"py-orders", "cache-py-empty", ch}
        await until(
            lambda: left
            <= {e["channel"] for e in self.events() if e["name"] == "channel_vacated"},
            "channel_vacated of each channel",
        )
        events = self.events()
        self.assertIn({"name": "channel_occupied", "channel": "py-orders"}, events)
        self.assertIn({"name": "channel_vacated", "channel": "py-orders"}, events)
        self.assertIn({"name": "cache_miss", "channel": "cache-py-empty"}, events)
        self.assertIn(
            {
                "name": "client_event",
                "channel": ch,
                "event": "client-ping",
                "data": json.dumps({"n": 1}),  # the text the client sent
                "socket_id": socket_id,
            },
            events,
        )
        # A tampered body or another secret does not validate.
        headers, body = Hooks.received[0]
        self.assertIsNone(
            self.sdk(secret="another-secret-0123456789").validate_webhook(
                headers["X-Pusher-Key"], headers["X-Pusher-Signature"], body.decode()
            )
        )
        tampered = body.decode().replace("channel", "channe1", 1)
        self.assertIsNone(
            self.sdk().validate_webhook(headers["X-Pusher-Key"], headers["X-Pusher-Signature"], tampered)
        )

    async def test_a_cache_channel_gives_the_event_the_sdk_published(self):
        await asyncio.to_thread(self.sdk().trigger, "cache-py", "price", {"v": 42})
        ws, _ = await self.connect()
        try:
            ok = await self.subscribe(ws, "cache-py")
            self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
            last = json.loads(await asyncio.wait_for(ws.recv(), 5))
            self.assertEqual(last["event"], "price")
            self.assertEqual(json.loads(last["data"]), {"v": 42})
        finally:
            await ws.close()


if __name__ == "__main__":
    unittest.main()
