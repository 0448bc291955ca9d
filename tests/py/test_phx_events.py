"""Python's `phx-events` 0.4.1 (PyPI, unmodified): a Phoenix V1 client (no `vsn`) that sends
its JSON objects as *binary* WebSocket frames, as Phoenix's V1 serializer accepts. Against a
real Plexus its join completes and a broadcast from the HTTP API reaches its handler.

Uses the server harness of test_supabase.py (a dev-profile Plexus; `room:*` is an ordinary
Phoenix topic there).
"""

import asyncio
import unittest
import warnings

from phx_events.client import PHXChannelsClient
from phx_events.topic_subscription import SubscriptionStatus

from test_supabase import Plexus, token, until

# phx-events uses websockets' legacy client, which websockets 15 still ships but flags.
warnings.filterwarnings("ignore", category=DeprecationWarning, module="phx_events")


class PhxEvents(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Plexus()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    async def test_join_and_receive_a_broadcast(self):
        url = f"ws://127.0.0.1:{self.server.port}/socket/websocket"
        got = []

        async def on_msg(message, _client):
            got.append(message)

        client = PHXChannelsClient(
            url, channel_auth_token=token("py-phx"), event_loop=asyncio.get_running_loop()
        )
        joined = client.register_topic_subscription("room:pyphx")
        client.register_event_handler("msg", [on_msg], topic="room:pyphx")
        task = asyncio.create_task(client.start_processing())
        try:
            await asyncio.wait_for(joined.wait(), 5)
            result = client._topic_registration_status["room:pyphx"].result
            self.assertEqual(result.status, SubscriptionStatus.SUCCESS, result)
            self.server.broadcast("room:pyphx", "msg", {"n": 1})
            await until(lambda: got, "the broadcast reached the handler")
            self.assertEqual(got[0].payload, {"n": 1})
        finally:
            client.shutdown("test over")
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


if __name__ == "__main__":
    unittest.main()
