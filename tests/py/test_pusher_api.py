"""Pusher's HTTP API through the official `pusher` PyPI SDK (3.3.4, unmodified) against a real
Plexus in Pusher mode: `trigger` and `trigger_batch` reach a Phoenix client (`phx-events`)
joined to the topic of the same name, `channels_info` / `channel_info` / `users_info` answer
Pusher's shapes, and a wrong secret or another app id is refused as Pusher refuses them.

Uses the server harness of test_supabase.py, with Pusher mode's environment.
"""

import asyncio
import unittest
import warnings

import pusher
from pusher.errors import PusherBadAuth, PusherBadStatus
from phx_events.client import PHXChannelsClient
from phx_events.topic_subscription import SubscriptionStatus

from test_supabase import Plexus, token, until

warnings.filterwarnings("ignore", category=DeprecationWarning, module="phx_events")

APP_ID, KEY, SECRET = "4242", "py-pusher-key", "py-pusher-secret-0123456789"

CONFIG = """
[[channels]]
topic = "news-*"
"""


class PusherApi(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Plexus(
            CONFIG,
            {
                "PLEXUS_PUSHER_APP_ID": APP_ID,
                "PLEXUS_PUSHER_KEY": KEY,
                "PLEXUS_PUSHER_SECRET": SECRET,
            },
        )

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def sdk(self, app_id=APP_ID, secret=SECRET) -> pusher.Pusher:
        return pusher.Pusher(
            app_id=app_id, key=KEY, secret=secret, host="127.0.0.1", port=self.server.port, ssl=False
        )

    async def test_trigger_and_batch_reach_a_phoenix_client(self):
        url = f"ws://127.0.0.1:{self.server.port}/socket/websocket"
        got = []

        async def on_msg(message, _client):
            got.append(message.payload)

        client = PHXChannelsClient(
            url, channel_auth_token=token("py-pusher"), event_loop=asyncio.get_running_loop()
        )
        joined = client.register_topic_subscription("news-py")
        client.register_event_handler("msg", [on_msg], topic="news-py")
        task = asyncio.create_task(client.start_processing())
        try:
            await asyncio.wait_for(joined.wait(), 5)
            result = client._topic_registration_status["news-py"].result
            self.assertEqual(result.status, SubscriptionStatus.SUCCESS, result)

            answer = await asyncio.to_thread(self.sdk().trigger, ["news-py", "news-other"], "msg", {"n": 1})
            self.assertEqual(answer, {})
            await until(lambda: got, "the triggered event")
            self.assertEqual(got[0], {"n": 1})

            batch = [{"channel": "news-py", "name": "msg", "data": {"n": 2}}]
            answer = await asyncio.to_thread(self.sdk().trigger_batch, batch)
            self.assertEqual(answer, {})
            await until(lambda: len(got) == 2, "the batch event")
            self.assertEqual(got[1], {"n": 2})

            # The channel is occupied while the Phoenix client is there.
            info = await asyncio.to_thread(
                self.sdk().channel_info, "news-py", ["subscription_count"]
            )
            self.assertEqual(info, {"occupied": True, "subscription_count": 1})
            channels = await asyncio.to_thread(self.sdk().channels_info, "news-")
            self.assertEqual(channels, {"channels": {"news-py": {}}})
        finally:
            client.shutdown("test over")
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def test_empty_presence_channel_and_refusals(self):
        self.assertEqual(self.sdk().channel_info("news-empty"), {"occupied": False})
        self.assertEqual(self.sdk().users_info("presence-empty"), {"users": []})
        with self.assertRaises(PusherBadAuth):
            self.sdk(secret="not-the-secret-0123456789").trigger("news-py", "msg", {})
        with self.assertRaises(PusherBadStatus) as refused:
            self.sdk(app_id="999").trigger("news-py", "msg", {})
        self.assertIn("404", str(refused.exception))


if __name__ == "__main__":
    unittest.main()
