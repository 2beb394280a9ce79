"""A real HTTP backend for the backend-integration tests: aiohttp.web on 127.0.0.1 in
its own thread and event loop (the gateway runs in another one).

`/svc` is scripted by the client's own message: the envelope's `data.do` says what to
answer, so one route covers every good and bad answer:

    {"answer": {...}}          200 with that JSON
    {"status": 500}            that status with a JSON body
    {"raw": "text"}            200 with that body (not JSON)
    {"huge": n, "chunked": b}  200 with n bytes (with or without Content-Length)
    {"gzip": 1}                200, gzip-encoded: 16 MiB of JSON once decompressed
    {"gz": {...}}              200 with that JSON, gzip-encoded ({"deflate": {...}}: zlib-wrapped deflate)
    {"sleep": s, "answer": …}  wait s seconds first
    absent                     200 {"reply": <the request body the backend received>}

`/batch` speaks the batch shape (`{"batch":[...]}` in and out): each entry's `data.do`
`{"answer": {...}}` is its answer (else `{"reply": <its msg>}`); the first entry's `do`
may also hold `sleep`, `status`, or `count` (answer with that many entries).

`/auth` decides by ticket (see `auth`). Every request's raw body is kept in `requests`.
"""
import asyncio
import gzip
import json
import socket
import threading
import time
import zlib

from aiohttp import web

from tests.client import http_get


BOMB = gzip.compress(b" " * (16 * 1024 * 1024) + b"{}", 1)


def free_port() -> int:
    """A port nothing listens on (for an unreachable backend)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(g) -> dict:
    """{(sample name, frozenset of labels): value} from the gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = http_get(g.port, "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def sample(metrics: dict, name: str, **labels) -> float:
    return metrics[(name, frozenset(labels.items()))]


class BackendServer:
    def __init__(self, ssl=None) -> None:
        self.requests: list[tuple[str, bytes]] = []
        self.peers: list[int] = []          # the gateway's source port of each request
        self.port = None
        self.closer_port = None
        self.loop = None
        self._release = None
        self._ssl = ssl
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("backend did not start")

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{'https' if self._ssl else 'http'}://{host}:{self.port}{path}"

    def bodies(self, path: str) -> list[bytes]:
        return [b for p, b in list(self.requests) if p == path]

    # -- server ------------------------------------------------------------------------
    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        self._release = asyncio.Event()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/svc", self.svc)
        app.router.add_post("/auth", self.auth)
        app.router.add_post("/batch", self.batch)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._ssl)
        loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        closer = loop.run_until_complete(asyncio.start_server(self._close_at_once, "127.0.0.1", 0))
        self.closer_port = closer.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_until_complete(self._release.wait())
        closer.close()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._release.set)
        self._thread.join(10)

    async def _close_at_once(self, reader, writer) -> None:
        """Reads the request head, then closes the connection without answering."""
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except Exception:
            pass
        writer.close()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._release.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def svc(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append(("/svc", raw))
        self.peers.append(request.transport.get_extra_info("peername")[1])
        body = json.loads(raw)
        do = (body["msg"].get("data") or {}).get("do") if isinstance(body["msg"].get("data"), dict) else None
        if do is None:
            return web.json_response({"reply": body})
        if "sleep" in do:
            await self._sleep(do["sleep"])
        if "status" in do:
            return web.json_response({"error": "boom"}, status=do["status"])
        if "raw" in do:
            return web.Response(text=do["raw"], content_type="text/plain")
        if "gzip" in do:       # 16 KiB on the wire, 16 MiB once decompressed
            return web.Response(body=BOMB, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        if "gz" in do:
            return web.Response(body=gzip.compress(json.dumps(do["gz"]).encode()),
                                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        if "deflate" in do:
            return web.Response(body=zlib.compress(json.dumps(do["deflate"]).encode()),
                                headers={"Content-Encoding": "deflate", "Content-Type": "application/json"})
        if "huge" in do:
            return await self._huge(request, do["huge"], do.get("chunked", False))
        return web.json_response(do.get("answer", {}))

    async def batch(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append(("/batch", raw))
        items = json.loads(raw)["batch"]
        dos = [(it["msg"].get("data") or {}).get("do") or {} if isinstance(it["msg"].get("data"), dict) else {}
               for it in items]
        ctl = dos[0]
        if "sleep" in ctl:
            await self._sleep(ctl["sleep"])
        if "status" in ctl:
            return web.json_response({"error": "boom"}, status=ctl["status"])
        answers = [d.get("answer", {"reply": it["msg"]}) for d, it in zip(dos, items)]
        if "count" in ctl:
            n = ctl["count"]
            answers = answers[:n] + [{"reply": "extra"}] * max(0, n - len(answers))
        return web.json_response({"batch": answers})

    async def _huge(self, request, n: int, chunked: bool) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=b"x" * n, content_type="application/json")
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b" " * 65536
        try:
            for _ in range(n // len(chunk)):
                await resp.write(chunk)
        except (ConnectionError, RuntimeError):
            return resp
        return resp

    async def auth(self, request: web.Request) -> web.Response:
        """Ticket → answer: `ok:<user>`, `exp:<s>:<user>` (exp in s seconds),
        `slow:<s>:<user>`, `deny` (403), `500`, `nonjson`, `extra:<user>` (unknown field),
        `past:<user>` (exp already over), `nouser`, `hang`."""
        raw = await request.read()
        self.requests.append(("/auth", raw))
        ticket = json.loads(raw)["ticket"]
        kind, _, rest = ticket.partition(":")
        if kind == "ok":
            return web.json_response({"user": rest})
        if kind == "exp":
            secs, _, user = rest.partition(":")
            return web.json_response({"user": user, "exp": time.time() + float(secs)})
        if kind == "slow":
            secs, _, user = rest.partition(":")
            await self._sleep(float(secs))
            return web.json_response({"user": user})
        if kind == "deny":
            return web.json_response({"error": "no"}, status=403)
        if kind == "500":
            return web.Response(status=500)
        if kind == "nonjson":
            return web.Response(text="yes, alice")
        if kind == "extra":
            return web.json_response({"user": rest, "role": "admin"})
        if kind == "past":
            return web.json_response({"user": rest, "exp": time.time() - 10})
        if kind == "nouser":
            return web.json_response({"exp": time.time() + 60})
        if kind == "hang":
            await self._sleep(30)
        return web.Response(status=401)


class AppThread:
    """Any aiohttp.web app on 127.0.0.1:`port` (0 = a free one) in its own thread and loop."""

    def __init__(self, make_app, port: int = 0) -> None:
        self._make_app = make_app
        self.port = port
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("app did not start")

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        self._stop = asyncio.Event()
        runner = web.AppRunner(self._make_app(), access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        loop.run_until_complete(self._stop.wait())
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class RawServer:
    """A TCP server on 127.0.0.1 that reads one HTTP request at a time (head and
    Content-Length body) and answers each with the next of `answers`, bytes written
    as given (a tuple: each part in its own write, 50 ms apart; None: close without
    answering); after the last one it closes."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.connections = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("raw server did not start")

    def url(self, path: str = "/svc") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        self._stop = asyncio.Event()
        server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_until_complete(self._stop.wait())
        server.close()
        loop.close()

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = next((int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n")
                               if ln.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                answer = self.answers.pop(0)
                if answer is None:
                    break
                for i, part in enumerate(answer if isinstance(answer, tuple) else (answer,)):
                    if i:
                        await asyncio.sleep(0.05)     # a tuple: its parts in separate TCP segments
                    writer.write(part)
                    await writer.drain()
        except Exception:
            pass
        writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
