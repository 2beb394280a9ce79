"""Python services used by test_python_services.py (imported by the gateway under test
as `tests.integration.pyservices:<Class>`). Each records what it saw in `self.seen`,
which the tests read through the gateway's loop (`g.call`)."""
import asyncio
import contextvars
import time

from wsprism.service import Service, ServiceError

STOPPED: list[str] = []          # on_stop calls, by svc (process-wide: read after the gateway stops)
MARK = contextvars.ContextVar("mark", default=None)


class Echo(Service):
    """on_message answers per type; on_hot publishes the frame back to the active room."""

    def __init__(self, options):
        super().__init__(options)
        self.seen: list = []
        self.hot: list = []

    async def on_start(self, gw):
        self.gw = gw
        self.started = True

    async def on_message(self, ctx, msg):
        self.seen.append((msg.type, msg.room, msg.seq, msg.data))
        t = msg.type
        if t == "echo":
            return {"data": msg.data, "user": ctx.user, "tenant": ctx.tenant, "sid": ctx.sid,
                    "rooms": list(ctx.rooms), "active": ctx.active_room, "opt": self.options.get("greeting")}
        if t == "none":
            return None
        if t == "refuse":
            raise ServiceError("NOT_ALLOWED", "not your turn")
        if t == "oddcode":
            raise ServiceError("NOPE", "made-up code")
        if t == "boom":
            raise RuntimeError("service bug")
        if t == "sleep":
            await asyncio.sleep(msg.data["s"])
            return {"slept": msg.data["s"], "n": msg.data.get("n")}
        if t == "forever":
            await asyncio.Event().wait()
        if t == "own_timeout":
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        if t == "publish":
            n = ctx.gw.publish(msg.room, "match", "event", msg.data)
            return {"delivered": n}
        if t == "send":
            ctx.send("match", "direct", {"to": ctx.user})
            return None
        if t == "send_to_user":
            return {"delivered": ctx.gw.send_to_user(msg.data["user"], "match", "note", {"from": ctx.user})}
        if t == "presence":
            p = ctx.gw.presence(msg.room)
            return {"count": p.count, "users": p.users}
        if t == "disconnect":
            return {"closed": ctx.gw.disconnect(msg.data["sid"])}
        if t == "close":
            ctx.close(4100, "bye")
            return None
        if t == "in_task":                    # asyncio features that need a current task
            task = asyncio.current_task()
            async with asyncio.timeout(1):
                await asyncio.sleep(0)
            async with asyncio.TaskGroup() as tg:
                a = tg.create_task(asyncio.sleep(0, "a"))
            return {"task": task is not None, "same": task is asyncio.current_task(), "tg": a.result()}
        if t == "inner_timeout":              # the service's own timeout cancels its own call
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.sleep(5)
            except TimeoutError:
                return {"inner": "timed out"}
        if t == "mark":                       # a context variable set in one call ...
            seen = MARK.get()
            MARK.set(ctx.user)
            if msg.data and msg.data.get("await"):
                await asyncio.sleep(0)
            return {"seen": seen, "after": MARK.get()}
        if t == "send_hot":
            return {"sent": ctx.send_hot(bytes([7, 9, 0]) + b"direct")}
        return {"type": t}

    def on_hot(self, ctx, op, flags, payload):
        self.hot.append((op, flags, bytes(payload)))
        if op == 66:
            raise ServiceError("NOT_ALLOWED", "op 66 refused")
        if op == 99:
            raise ValueError("hot bug")
        if op == 200:
            time.sleep(0.2)           # blocks the loop: what the docs warn against
        if ctx.active_room is not None:
            ctx.gw.publish_hot(ctx.active_room, bytes([7, op, 0]) + payload)


class Counter(Service):
    """A plain-def on_message (runs inline) and a 50 ms timer publishing a counter."""

    def __init__(self, options):
        super().__init__(options)
        self.n = 0
        self.ticks = 0
        self.timer = None

    async def on_start(self, gw):
        self.timer = gw.every(self.options.get("tick_ms", 50), self.tick)

    def tick(self):
        self.ticks += 1

    def on_message(self, ctx, msg):
        self.n += 1
        if msg.type == "boom":
            raise KeyError("inline bug")
        if msg.type == "refuse":
            raise ServiceError("RESOURCE_EXHAUSTED", "full")
        return {"n": self.n}

    async def on_stop(self):
        STOPPED.append(self.svc)


class Hooks(Service):
    """Records joins, leaves and disconnects (and the ctx it got)."""

    def __init__(self, options):
        super().__init__(options)
        self.seen: list = []

    async def on_join(self, ctx, room):
        self.seen.append(("join", ctx.user, room))

    async def on_leave(self, ctx, room):
        self.seen.append(("leave", ctx.user, room))

    async def on_disconnect(self, ctx):
        self.seen.append(("gone", ctx.user, ctx.open))


class Ticker(Service):
    """A 20 ms timer that publishes to a room, and an async timer that raises."""

    async def on_start(self, gw):
        self.ticks = 0
        self.errors = 0
        gw.every(20, lambda: self.tick(gw))
        gw.every(30, self.bad)

    def tick(self, gw):
        self.ticks += 1
        gw.publish("tick", "ticker", "tick", {"n": self.ticks})

    async def bad(self):
        self.errors += 1
        raise RuntimeError("timer bug")


class NoMessages(Service):
    """Only hooks: messages to it are an unknown service."""

    async def on_join(self, ctx, room):
        pass


class Broken(Service):
    def __init__(self, options):
        raise RuntimeError("cannot start: no database")


class NoHot(Service):
    async def on_message(self, ctx, msg):
        return None


class FailsToStart(Service):
    async def on_start(self, gw):
        raise ConnectionError("database down")


NotAService = dict
