"""Our own Redis connections: RESP written with `hiredis.pack_command`, replies parsed by
`hiredis.Reader`, on a plain asyncio protocol.

Why not redis-py on this path: measured here (shared/SCALEOUT-NOTES), redis-py's asyncio
client tops out at 72-99k pipelined PUBLISH/s and its `PubSub` at ~80k received msg/s,
while this protocol does 1.2M/s and 415-450k/s on the same core; under load Redis closed
redis-py's subscriber for falling behind about once a second, and redis-py reconnected and
resubscribed silently, losing messages with no error (also redis-py #2089, #1572, #2417).
Its default retries and timeouts can stall an await for seconds during an outage, and
cancelling an await mid-command desynchronised replies (CVE-2023-28858/28859). Here:

- replies are matched to requests by a FIFO of waiters; a waiter that gives up (timeout,
  cancellation) stays in the FIFO and its reply is read and dropped, so replies can never
  shift onto the wrong request;
- writes queued in one event-loop turn go out in one `write` at the end of the turn
  (auto-pipelining, like centrifuge's flush window), and nothing on the per-message path
  awaits a reply;
- reconnecting, resubscribing and every timeout belong to the broker (broker/redis.py),
  never to a library default.
"""
import asyncio
import ssl as ssl_module
from collections import deque
from urllib.parse import unquote, urlsplit

import hiredis

pack_command = hiredis.pack_command
ReplyError = hiredis.ReplyError

CONNECT_TIMEOUT = 1.0


class BrokerError(Exception):
    """The link is down, timed out, or Redis answered an error."""


class RedisURL:
    __slots__ = ("host", "port", "db", "username", "password", "tls")

    def __init__(self, host, port, db, username, password, tls) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password, self.tls = username, password, tls

    def __repr__(self) -> str:   # never the password
        return f"redis{'s' if self.tls else ''}://{self.host}:{self.port}/{self.db}"


def parse_url(url: str) -> RedisURL:
    """`redis://[[user]:password@]host[:port][/db]`, `rediss://` for TLS."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("expected redis:// or rediss://")
    path = parts.path.lstrip("/")
    db = int(path) if path else 0
    return RedisURL(
        parts.hostname or "127.0.0.1", parts.port or 6379, db,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
        parts.scheme == "rediss",
    )


class Connection(asyncio.Protocol):
    """One Redis connection. Subclasses decide what a reply is for (`on_reply`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport = None
        self.reader = hiredis.Reader()
        self.lost: asyncio.Future | None = None      # set when the connection is gone
        self.paused = False                          # write buffer above its mark
        self.local_abort = False                     # we dropped it (timeout, probe, closing)
        self.bytes_in = 0
        self._buf: list = []
        self._flush_scheduled = False
        self._loop = None

    # -- asyncio protocol --------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self.lost = self._loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        reader = self.reader
        reader.feed(data)
        on_reply = self.on_reply
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:    # never expected from Redis: drop the link
                self.abort(f"protocol error: {exc}")
                return
            if reply is False:
                return
            on_reply(reply)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(str(exc) if exc else "closed by Redis")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # -- writing -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue raw RESP for the end of this loop turn (one write per turn)."""
        self._buf.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        buf = self._buf
        if not buf:
            return
        self._buf = []
        tr = self.transport
        if tr is not None:
            tr.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def backlog(self) -> int:
        """Bytes written but not yet taken by the kernel (the link's mark is on this)."""
        tr = self.transport
        return tr.get_write_buffer_size() if tr is not None else 0

    @property
    def is_open(self) -> bool:
        return self.transport is not None

    def abort(self, reason: str) -> None:
        if self.lost is not None and not self.lost.done():
            self.local_abort = True
            self.lost.set_result(reason)
        tr = self.transport
        if tr is not None:
            tr.abort()

    def on_reply(self, reply) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError


class CommandConnection(Connection):
    """Requests and replies in order. `call` returns a future; `send` is fire-and-forget
    (its reply is read and dropped, an error reply counted)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.waiters: deque = deque()
        self.errors = 0            # error replies to fire-and-forget commands
        self.last_progress = 0.0   # loop time of the last reply, or of the first waiter

    def on_reply(self, reply) -> None:
        waiters = self.waiters
        self.last_progress = self._loop.time()
        if not waiters:         # a reply nobody asked for: the stream is out of step
            self.abort("unexpected reply")
            return
        fut = waiters.popleft()
        if fut is None:
            if type(reply) is ReplyError:
                self.errors += 1
            return
        if fut.done():          # gave up waiting (timeout, cancelled): reply dropped
            return
        if type(reply) is ReplyError:
            fut.set_exception(BrokerError(str(reply)))
        else:
            fut.set_result(reply)

    def _expect(self, fut) -> None:
        if not self.waiters:
            self.last_progress = self._loop.time()
        self.waiters.append(fut)

    def send(self, *args) -> None:
        self._expect(None)
        self.write(pack_command(args))

    def send_packed(self, data: bytes, replies: int) -> None:
        """Already packed RESP carrying `replies` commands, replies dropped."""
        for _ in range(replies):
            self._expect(None)
        self.write(data)

    def call(self, *args) -> asyncio.Future:
        fut = self._loop.create_future()
        self._expect(fut)
        self.write(pack_command(args))
        return fut

    def stalled(self, now: float, timeout: float) -> bool:
        """Replies are owed and none came for `timeout` seconds (Redis hung, or a
        network path that swallows packets)."""
        return bool(self.waiters) and now - self.last_progress > timeout

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        self.fail_all("connection lost")

    def fail_all(self, reason: str) -> None:
        waiters, self.waiters = self.waiters, deque()
        for fut in waiters:
            if fut is not None and not fut.done():
                fut.set_exception(BrokerError(reason))


async def open_connection(proto: CommandConnection, url: RedisURL, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect, then AUTH / SELECT / CLIENT SETNAME, all within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    ssl = ssl_module.create_default_context() if url.tls else None

    async def steps() -> None:
        await loop.create_connection(lambda: proto, url.host, url.port, ssl=ssl)
        hello = []
        if url.password is not None:
            hello.append(proto.call("AUTH", url.username, url.password) if url.username
                         else proto.call("AUTH", url.password))
        if url.db:
            hello.append(proto.call("SELECT", url.db))
        hello.append(proto.call("CLIENT", "SETNAME", proto.name))
        for fut in hello:
            await fut

    try:
        await asyncio.wait_for(steps(), timeout)
    except BaseException:
        proto.abort("connect failed")
        raise
