"""The gateway's one HTTP client for backend calls (service webhooks, auth webhook).

One pooled aiohttp `ClientSession` per gateway, created on first use inside the running
loop (a process runs one gateway): keep-alive connections, at most
`CONNECTIONS_PER_HOST` open to each backend. `post_json` answers `(status, body)` before
a deadline and reads at most `max_body` bytes of the answer; anything else is a
`BackendFailure` whose `outcome` is one of a fixed set (a metric label).

Tasks that wait on the backend are started with `spawn`, so `close` can cancel the
ones still running at shutdown.
"""
import asyncio

import aiohttp

from .. import __version__

CONNECTIONS_PER_HOST = 128
CONNECTIONS_TOTAL = 1024
KEEPALIVE_S = 30.0
READ_BUFSIZE = 64 * 1024

# failure outcomes
TIMEOUT = "timeout"            # no complete answer before the deadline
UNREACHABLE = "unreachable"    # refused, reset, closed before answering, TLS failure
TOO_LARGE = "too_large"        # the answer is longer than max_body

_HEADERS = {"Content-Type": "application/json", "User-Agent": f"wsprism/{__version__}"}


class BackendFailure(Exception):
    """The backend gave no usable HTTP answer. `outcome` is TIMEOUT, UNREACHABLE or TOO_LARGE."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


class HttpClient:
    __slots__ = ("_session", "_tasks", "closed")

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self.closed = False

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=CONNECTIONS_TOTAL, limit_per_host=CONNECTIONS_PER_HOST, keepalive_timeout=KEEPALIVE_S,
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector, headers=_HEADERS, timeout=aiohttp.ClientTimeout(total=None),
                read_bufsize=READ_BUFSIZE, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("Accept-Encoding",),   # answers are small: ask for no compression
            )
        return session

    def spawn(self, coro) -> asyncio.Task:
        """Run `coro` as a task held here until it ends (cancelled by `close`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def post_json(self, url: str, body: bytes, deadline: float, max_body: int) -> tuple[int, bytes]:
        """POST `body` (JSON) to `url`; (status, answer body) before loop time `deadline`."""
        if self.closed:
            raise BackendFailure(UNREACHABLE, "gateway is shutting down")
        try:
            async with asyncio.timeout_at(deadline):
                async with self._client().post(url, data=body) as resp:
                    size = resp.content_length
                    if size is not None and size > max_body:
                        resp.close()
                        raise BackendFailure(TOO_LARGE, f"answer of {size} bytes (limit {max_body})")
                    return resp.status, await _read_capped(resp, max_body)
        except TimeoutError:
            raise BackendFailure(TIMEOUT, "no answer in time") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendFailure(UNREACHABLE, f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        """Cancel the tasks still waiting on a backend, then close the pooled connections."""
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_capped(resp, max_body: int) -> bytes:
    """The (decompressed) body, counted as it arrives: a compressed bomb stops at max_body too."""
    content = resp.content
    buf = bytearray()
    while True:
        chunk = await content.readany()
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > max_body:
            resp.close()
            raise BackendFailure(TOO_LARGE, f"answer longer than {max_body} bytes")
