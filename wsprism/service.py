"""Write your own service, run inside the gateway next to the sockets (SPEC 15).

    from wsprism.service import Service, ServiceError

    class Match(Service):
        async def on_message(self, ctx, msg):
            if msg.type == "move":
                if not ctx.active_room:
                    raise ServiceError("NOT_ALLOWED", "join a match first")
                ctx.gw.publish(ctx.active_room, "match", "moved", {"by": ctx.user, **msg.data})
                return {"ok": True}          # the sender gets it as match.reply

and in wsprism.yaml:

    tenants:
      - id: game
        services:
          match: {python: "mygame.match:Match", hot_svc_id: 7, options: {board: 3}}
        policy:
          ext_allowlist: ["room:*", "match:*"]
          hot_allowlist: ["7:*"]

One instance per tenant and service, built with `Match(options)` at start. Every hook is
optional; define the ones you need. All of them run on the gateway's event loop: never
block it (docs/services.md says how to offload CPU work). See docs/services.md for the
whole guide: the hooks, `ctx` and `gw`, errors, timeouts and testing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.dispatcher import ServiceError

if TYPE_CHECKING:       # the objects the hooks receive (wsprism/services/python.py)
    from .services.python import Context, Message, ServiceGateway

__all__ = ["Service", "ServiceError"]


class Service:
    """Base class of in-process services.

    `svc` (the service's key in the config), `tenant` (the tenant id) and `hot_svc_id`
    (None without one) are set before `on_start`; `options` is the config's `options`.
    """

    svc: str = ""
    tenant: str = ""
    hot_svc_id: int | None = None

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    async def on_start(self, gw: ServiceGateway) -> None:
        """Once, before the gateway accepts connections; `gw` is the tenant's gateway
        (the same object as `ctx.gw`). Start `gw.every(...)` timers here. An exception
        stops the gateway from starting."""

    async def on_stop(self) -> None:
        """Once, after the last session is gone (drain) and the timers are cancelled."""

    async def on_message(self, ctx: Context, msg: Message) -> Any:
        """An allowed Ext Lane message for this service (`msg.type`, `msg.room`,
        `msg.seq`, `msg.data`). A return value other than None goes to the sender as
        `{"svc":<svc>,"type":"reply","seq"?:..,"data":<value>}`, then the ack if asked.
        Per session, one call at a time, in order. May be a plain `def` (runs inline,
        without a task, when it never needs to await)."""

    def on_hot(self, ctx: Context, op: int, flags: int, payload: bytes) -> None:
        """A Hot Lane frame with this service's `hot_svc_id` (synchronous; `payload`, the
        bytes after the header, is valid only during the call). Called for every frame:
        keep it short."""

    async def on_join(self, ctx: Context, room: str) -> None:
        """A session of the tenant joined (or re-joined) a room."""

    async def on_leave(self, ctx: Context, room: str) -> None:
        """A session left a room (also each of its rooms when it disconnects)."""

    async def on_disconnect(self, ctx: Context) -> None:
        """A session of the tenant is gone (after on_leave for each of its rooms)."""
