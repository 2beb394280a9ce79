"""The gateway's one HTTP client for backend calls (service webhooks, auth webhook).

`post_json(url, body, deadline, max_body)` answers `(status, body)` before a loop-time
deadline and reads at most `max_body` bytes of the answer (counted after decompression,
so a gzip bomb stops there too); anything else is a `BackendFailure` whose `outcome` is
one of a fixed set (a metric label). Keep-alive connections are pooled per backend
(scheme, host, port): at most `CONNECTIONS_PER_HOST` open to one, `CONNECTIONS_TOTAL` in
all, idle ones closed after `KEEPALIVE_S`. `https://` backends are verified against the
system's CA store (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured).

Why not a full client library: every backend call is one small JSON POST answered by a
small JSON body, and the gateway pays for the client on every forwarded message. aiohttp
(the client used before) spent about 50 µs of CPU per call here (request and response
objects, header multidicts, cookie and redirect handling, a stream reader, its timer
objects); httpx (h11 in pure Python) is slower still. What a webhook needs is an HTTP/1.1
connection pool, a correct response parser and a byte counter, so this is a thin asyncio
protocol on httptools (the llhttp parser that uvicorn uses): the parsing, chunked
transfer coding and keep-alive rules are httptools', only the pooling is ours.

Two ways to call: `post(url, body, deadline, max_body, done)` calls `done(result)` once,
later (never from inside `post`), with `(status, body)` or a `BackendFailure`: no task,
future or coroutine per request, which is what the service webhooks use on every
forwarded message; `await post_json(...)` is the same as a coroutine (auth webhooks).
Each connection has one deadline timer at a time, re-armed only when a request's deadline
comes before the armed one (answered requests leave it armed; when it fires it checks the
request then in flight), so a request costs no timer of its own.

Tasks that wait on the backend are started with `spawn`, so `close` can cancel the ones
still running at shutdown; `close` also fails the `post` requests still at a backend.
"""
import asyncio
import ssl as ssl_module
from functools import partial
import zlib
from collections import deque
from urllib.parse import quote, urlsplit

import httptools

from .. import __version__

CONNECTIONS_PER_HOST = 128
CONNECTIONS_TOTAL = 1024
KEEPALIVE_S = 30.0

# failure outcomes
TIMEOUT = "timeout"            # no complete answer before the deadline
UNREACHABLE = "unreachable"    # refused, reset, closed before answering, TLS failure, not HTTP
TOO_LARGE = "too_large"        # the answer is longer than max_body

_HEAD = (b"POST %b HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\n"
         b"User-Agent: wsprism/" + __version__.encode() + b"\r\nContent-Length: ")
_URL_CACHE_MAX = 4096
_PATH_SAFE = "/?&=%:@+,;~!$'()*[]"        # left as is; anything else (non-ASCII) percent-encoded


class BackendFailure(Exception):
    """The backend gave no usable HTTP answer. `outcome` is TIMEOUT, UNREACHABLE or TOO_LARGE."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


class _Target:
    """One backend origin: where to connect and the request head for each of its URLs."""

    __slots__ = ("host", "port", "tls", "server_hostname", "idle", "open", "waiters", "conns")

    def __init__(self, host: str, port: int, tls: bool) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.server_hostname = host if tls else None
        self.idle: list[_Conn] = []           # LIFO: the most recently used first
        self.open = 0                         # connections open or being opened
        self.waiters: deque = deque()         # futures waiting for a connection slot
        self.conns: set[_Conn] = set()        # every open connection (idle or busy)


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection to a backend: one request at a time."""

    __slots__ = ("client", "target", "loop", "transport", "parser", "done", "timer", "timer_at", "deadline",
                 "status", "body", "limit", "inflate", "length_known", "headers_done", "idle_since", "closed",
                 "counted", "encoding", "result", "keep")

    def __init__(self, client: "HttpClient", target: _Target, loop) -> None:
        self.client = client
        self.target = target
        self.loop = loop
        self.transport = None
        self.parser = None
        self.done = None               # the request's callback, while one is at the backend
        self.timer = None              # armed for timer_at; the request's own deadline may be later
        self.timer_at = 0.0
        self.deadline = 0.0
        self.result = None             # a complete answer, settled once feed_data is done
        self.keep = False
        self.closed = False
        self.counted = True            # holds one of the pool's connection slots
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.body = b""                 # bytes for an answer in one piece, a bytearray from the second
        self.limit = 0
        self.inflate = None
        self.length_known = False
        self.headers_done = False
        self.encoding = None

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = httptools.HttpResponseParser(self)   # parses each answer in turn

    def data_received(self, data: bytes) -> None:
        if self.done is None:          # nothing asked: a stray byte on an idle connection
            self._abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            result = self.result
            if result is not None:           # an answer, then bytes that are not: the answer stands
                self.result = None
                self._abort()
                self._settle(result)
                return
            cause = exc.__context__          # what one of our callbacks raised
            if isinstance(cause, BackendFailure):
                self._fail(cause.outcome, cause.detail)
            elif isinstance(exc, httptools.HttpParserUpgrade):
                self._fail(UNREACHABLE, "backend answered with a protocol upgrade")
            else:
                self._fail(UNREACHABLE, f"invalid HTTP answer: {exc}")
            return
        result = self.result
        if result is not None:
            # settled after the parser is done with this chunk, so that the callback's next
            # request on this connection never takes bytes that followed this answer
            self.result = None
            if self.keep and not self.closed:
                self.client._release(self)
            else:
                self._abort()
            self._settle(result)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.client._forget(self)
        self._stop_timer()
        if self.done is None:
            return
        if self.headers_done and not self.length_known:
            # no Content-Length, not chunked: the body ends with the connection
            try:
                self._finish_body()
            except BackendFailure as failure:
                self._settle(failure)
                return
            body = self.body
            self._settle((self.status, body if type(body) is bytes else bytes(body)))
            return
        if exc is None:
            self._settle(BackendFailure(UNREACHABLE, "backend closed the connection without answering"))
        else:
            self._settle(BackendFailure(UNREACHABLE, f"{type(exc).__name__}: {exc}"))

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks -------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        if n == 14 and name.lower() == b"content-length":
            self.length_known = True
            try:
                size = int(value)
            except ValueError:
                return                        # llhttp rejects it itself
            if size > self.limit:
                raise BackendFailure(TOO_LARGE, f"answer of {size} bytes (limit {self.limit})")
        elif n == 16 and name.lower() == b"content-encoding":
            self.encoding = value.strip().lower()
        elif n == 17 and name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            self.length_known = True

    def on_headers_complete(self) -> None:
        if self.result is not None:           # a second answer in the chunk of the first
            raise BackendFailure(UNREACHABLE, "backend sent a second answer to one request")
        self.headers_done = True
        self.status = self.parser.get_status_code()
        enc = self.encoding
        if enc in (b"gzip", b"x-gzip"):
            self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == b"deflate":
            self.inflate = zlib.decompressobj()   # zlib-wrapped, as RFC 9110 says
        # anything else (identity, or an encoding not asked for) is passed on as is and
        # fails the JSON decode: bad_answer

    def on_body(self, data: bytes) -> None:
        inflate = self.inflate
        body = self.body
        if inflate is None:
            if not body:
                body = self.body = data
            else:
                if type(body) is bytes:
                    body = self.body = bytearray(body)
                body += data
        else:
            if type(body) is bytes:
                body = self.body = bytearray(body)
            try:
                body += inflate.decompress(data, self.limit + 1 - len(body))
            except zlib.error as exc:
                raise BackendFailure(UNREACHABLE, f"invalid {self.encoding.decode()} body: {exc}") from None
        if len(body) > self.limit:
            raise BackendFailure(TOO_LARGE, f"answer longer than {self.limit} bytes")

    def on_message_complete(self) -> None:
        self._finish_body()
        if self.done is None:                # nothing asked (a stray answer on an idle connection)
            self._abort()
            return
        if 100 <= self.status < 200:
            # an interim answer (100 Continue, 103 Early Hints; 101 is refused as an
            # upgrade): the final one follows on this connection. Taking it as the answer
            # would hand the final one to the next request sent here.
            limit = self.limit
            self._reset()
            self.limit = limit
            return
        body = self.body
        self.result = (self.status, body if type(body) is bytes else bytes(body))
        self.keep = self.parser.should_keep_alive()

    def _finish_body(self) -> None:
        inflate = self.inflate
        if inflate is not None:
            room = self.limit + 1 - len(self.body)
            if room > 0:
                if type(self.body) is bytes:
                    self.body = bytearray(self.body)
                self.body += inflate.flush(room)
            if len(self.body) > self.limit or inflate.unconsumed_tail:
                raise BackendFailure(TOO_LARGE, f"answer longer than {self.limit} bytes")

    # -- requests ------------------------------------------------------------------------
    def request(self, data: bytes, limit: int, deadline: float, done) -> None:
        """Send one request; `done(result)` gets its answer or failure, once, later."""
        self._reset()
        self.limit = limit
        self.done = done
        self.deadline = deadline
        timer = self.timer
        if timer is None or deadline < self.timer_at:
            if timer is not None:
                timer.cancel()
            self.timer_at = deadline
            self.timer = self.loop.call_at(deadline, self._on_timer)
        self.transport.write(data)

    def _on_timer(self) -> None:
        self.timer = None
        if self.done is None:
            return                            # armed for an answered request: nothing to time
        if self.deadline > self.timer_at:     # armed for an earlier request: this one has longer
            self.timer_at = self.deadline
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        self._fail(TIMEOUT, "no answer in time")

    def _stop_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()

    def _fail(self, outcome: str, detail: str) -> None:
        self._abort()
        self._settle(BackendFailure(outcome, detail))

    def _settle(self, result) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(result)

    def _abort(self) -> None:
        """Close for good (an answer cut short cannot be resynchronised)."""
        if not self.closed:
            self.closed = True
            self.client._forget(self)
            self._stop_timer()
            if self.transport is not None:
                self.transport.abort()


class HttpClient:
    __slots__ = ("_tasks", "closed", "_targets", "_urls", "_open_total", "_ssl", "_sweeper", "_loop")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()
        self.closed = False
        self._targets: dict[tuple, _Target] = {}
        self._urls: dict[str, tuple[_Target, bytes]] = {}
        self._open_total = 0
        self._ssl = None
        self._sweeper = None
        self._loop = None

    def spawn(self, coro) -> asyncio.Task:
        """Run `coro` as a task held here until it ends (cancelled by `close`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the one call, two ways ---------------------------------------------------------
    # No retry on another connection, not even when a kept-alive one turns out to be
    # closed: the backend may have acted on the request, and a webhook message reaches it
    # at most once (idle connections the backend closed are dropped from the pool as soon
    # as the close arrives).
    def post(self, url: str, body: bytes, deadline: float, max_body: int, done) -> None:
        """POST `body` (JSON) to `url`; `done((status, answer body))` before loop time
        `deadline`, else `done(BackendFailure)`. `done` is called once, never from here:
        with an idle kept-alive connection the request is written now and the callback
        comes from its answer or its timer, with no task or future."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        try:
            target, data = self._prepare(url, body)
        except BackendFailure as failure:
            loop.call_soon(done, failure)
            return
        conn = self._take_idle(target)
        if conn is not None:
            conn.request(data, max_body, deadline, done)
        else:
            self.spawn(self._post_later(target, data, deadline, max_body, done, loop))

    async def _post_later(self, target: _Target, data: bytes, deadline: float, max_body: int, done, loop) -> None:
        """`post` when no idle connection is there: wait for one (or open one) first."""
        try:
            conn = await self._acquire(target, deadline, loop)
        except BackendFailure as failure:
            done(failure)
            return
        except asyncio.CancelledError:
            done(BackendFailure(UNREACHABLE, "gateway is shutting down"))
            raise
        conn.request(data, max_body, deadline, done)

    async def post_json(self, url: str, body: bytes, deadline: float, max_body: int) -> tuple[int, bytes]:
        """`post` as a coroutine: (status, answer body) before loop time `deadline`, else
        BackendFailure. A caller cancelled meanwhile leaves the request to end on its own
        (its answer or its deadline), so the connection returns to the pool."""
        fut = asyncio.get_running_loop().create_future()
        self.post(url, body, deadline, max_body, partial(_resolve, fut))
        return await fut

    def _prepare(self, url: str, body: bytes) -> tuple[_Target, bytes]:
        if self.closed:
            raise BackendFailure(UNREACHABLE, "gateway is shutting down")
        entry = self._urls.get(url)
        if entry is None:
            entry = self._parse(url)
        target, head = entry
        return target, b"%b%d\r\n\r\n%b" % (head, len(body), body)

    @staticmethod
    def _take_idle(target: _Target) -> "_Conn | None":
        idle = target.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                return conn
            conn._abort()
        return None

    def _parse(self, url: str) -> tuple[_Target, bytes]:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise BackendFailure(UNREACHABLE, f"bad URL {url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise BackendFailure(UNREACHABLE, f"bad URL {url!r}: only http:// and https:// are supported")
        tls = scheme == "https"
        host = parts.hostname
        port = port or (443 if tls else 80)
        key = (host, port, tls)
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = _Target(host, port, tls)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = parts.netloc.rpartition("@")[2]          # never send userinfo
        try:
            head = _HEAD % (quote(path, safe=_PATH_SAFE).encode("ascii"),
                            netloc.encode("ascii") if netloc.isascii() else netloc.encode("idna"))
        except UnicodeError as exc:
            raise BackendFailure(UNREACHABLE, f"bad URL {url!r}: {exc}") from None
        if len(self._urls) >= _URL_CACHE_MAX:
            self._urls.clear()
        entry = self._urls[url] = (target, head)
        return entry

    # -- the pool ----------------------------------------------------------------------
    async def _acquire(self, target: _Target, deadline: float, loop) -> _Conn:
        conn = self._take_idle(target)
        if conn is not None:
            return conn
        while target.open >= CONNECTIONS_PER_HOST or self._open_total >= CONNECTIONS_TOTAL:
            if self._open_total >= CONNECTIONS_TOTAL and self._close_idle_elsewhere(target):
                continue
            fut = loop.create_future()
            target.waiters.append(fut)
            try:
                conn = await self._wait(fut, deadline, loop)
            except BaseException:
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    # handed a connection (or a freed slot) in the turn this wait timed out
                    # or was cancelled: pass it on, or the connection is lost to the pool
                    # (open, neither idle nor busy) and the slot's wake-up with it
                    handed = fut.result()
                    if handed is not None:
                        self._release(handed)
                    else:
                        self._wake(target)
                raise
            if conn is not None:
                if not conn.closed and not conn.transport.is_closing():
                    return conn
                conn._abort()                 # the backend closed it while it was handed over
        return await self._connect(target, deadline, loop)

    async def _wait(self, fut, deadline: float, loop):
        try:
            async with asyncio.timeout_at(deadline):
                return await fut
        except TimeoutError:
            raise BackendFailure(TIMEOUT, "no connection to the backend free in time") from None

    async def _connect(self, target: _Target, deadline: float, loop) -> _Conn:
        target.open += 1
        self._open_total += 1
        conn = _Conn(self, target, loop)
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(
                    lambda: conn, target.host, target.port,
                    ssl=self._ssl_context() if target.tls else None, server_hostname=target.server_hostname)
        except TimeoutError:
            self._forget(conn)
            raise BackendFailure(TIMEOUT, "no answer in time (connecting)") from None
        except (OSError, ssl_module.SSLError, ValueError) as exc:
            self._forget(conn)
            raise BackendFailure(UNREACHABLE, f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            self._forget(conn)
            if conn.transport is not None:
                conn.transport.abort()
            raise
        if self.closed:
            conn._abort()
            raise BackendFailure(UNREACHABLE, "gateway is shutting down")
        target.conns.add(conn)
        return conn

    def _close_idle_elsewhere(self, target: _Target) -> bool:
        """At the total cap: close the longest-idle connection to another backend."""
        oldest = None
        for t in self._targets.values():
            if t is not target and t.idle and (oldest is None or t.idle[0].idle_since < oldest.idle_since):
                oldest = t.idle[0]
        if oldest is None:
            return False
        oldest._abort()
        return True

    def _ssl_context(self):
        if self._ssl is None:
            self._ssl = ssl_module.create_default_context()
        return self._ssl

    def _release(self, conn: _Conn) -> None:
        """A finished connection: to the first waiter, else to the idle pool."""
        target = conn.target
        while target.waiters:
            fut = target.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        if self.closed:
            conn._abort()
            return
        conn.idle_since = conn.loop.time()
        target.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(KEEPALIVE_S / 2, self._sweep)

    def _forget(self, conn: _Conn) -> None:
        """A connection is gone (or never opened): free its slot, wake a waiter to open one."""
        target = conn.target
        if conn in target.idle:
            target.idle.remove(conn)
        target.conns.discard(conn)
        if conn.counted:
            conn.counted = False
            target.open -= 1
            self._open_total -= 1
            self._wake(target)

    @staticmethod
    def _wake(target: _Target) -> None:
        """A slot is free: the first waiter may open a connection now."""
        while target.waiters:
            fut = target.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    def _sweep(self) -> None:
        """Close connections idle longer than KEEPALIVE_S; re-arm while any are idle."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        limit = loop.time() - KEEPALIVE_S
        busy = False
        for target in list(self._targets.values()):
            for conn in [c for c in target.idle if c.idle_since <= limit]:
                conn._abort()
            busy = busy or bool(target.idle)
        if busy and not self.closed:
            self._sweeper = loop.call_later(KEEPALIVE_S / 2, self._sweep)

    async def close(self) -> None:
        """Cancel the tasks still waiting on a backend, then close the pooled connections."""
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for target in self._targets.values():
            for conn in list(target.conns):
                if conn.done is not None:
                    conn._fail(UNREACHABLE, "gateway is shutting down")
            for conn in list(target.idle):
                conn._abort()
            for fut in target.waiters:
                if not fut.done():
                    fut.cancel()


def _resolve(fut: asyncio.Future, result) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)
