"""Python services the benchmarks drive (benches/services_bench.py, benches/configs/services.yaml)."""
from wsprism.service import Service

REPLY = {"ok": 1}


class Reply(Service):
    """The smallest async service: answers every message with a small reply."""

    async def on_message(self, ctx, msg):
        return REPLY


class ReplySync(Service):
    """The same with a plain-def on_message (runs inline, without a task)."""

    def on_message(self, ctx, msg):
        return REPLY


class HotRoom(Service):
    """A user-level relay: every Hot Lane frame goes back to the sender's active room,
    same bytes, through `gw.publish_hot` (what the built-in relay does in the framer)."""

    def on_hot(self, ctx, op, flags, payload):
        room = ctx.active_room
        if room is not None:
            ctx.gw.publish_hot(room, bytes((self.hot_svc_id, op, flags)) + payload)
