"""A scripted stand-in for the gateway, played inside the browser with Playwright's
`page.route_web_socket`: the page's WebSocket never leaves the browser, so a test can
send what no real gateway sends (bad JSON, unknown types, short binary frames, any close
code) and see exactly what the client sends back.

Handlers run on the test's thread while it waits in a Playwright call (`evaluate`,
`wait_for_function`, `wait_for_timeout`), so tests wait through those, never `time.sleep`.
"""
import json
import re
import time
from urllib.parse import parse_qs, urlparse

BASE = "http://wsprism.test"
WS_URL = "ws://wsprism.test/v1/ws"


class Conn:
    """One WebSocket the page opened."""

    def __init__(self, ws, fake) -> None:
        self.ws = ws
        self.fake = fake
        self.at = time.monotonic()
        q = parse_qs(urlparse(ws.url).query)
        self.query = {k: v[0] for k, v in q.items()}
        self.received: list = []        # parsed JSON objects, or bytes for binary frames
        self.closed = False

    def send(self, obj) -> None:
        self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    def sys(self, type_: str, **fields) -> None:
        self.send({"v": 1, "svc": "sys", "type": type_, **fields})

    def authed(self, user: str = "alice") -> None:
        self.sys("authed", data={"tenant": self.query.get("tenant"), "user": user,
                                 "sid": self.query.get("sid", "generated")}, trace_id="t1")

    def close(self, code: int, reason: str = "") -> None:
        self.closed = True
        self.ws.close(code=code, reason=reason)

    def sent(self, svc: str, type_: str) -> list[dict]:
        return [m for m in self.received if isinstance(m, dict) and m.get("svc") == svc and m.get("type") == type_]


class FakeGateway:
    """`on_connect(conn)` runs for each new connection (default: send `authed`);
    `on_message(conn, msg)` for each frame the page sends (default: answer pings and
    joins the way the gateway does, nothing else)."""

    def __init__(self, page, on_connect=None, on_message=None) -> None:
        self.conns: list[Conn] = []
        self.on_connect = on_connect or (lambda conn: conn.authed())
        self.on_message = on_message or answer_like_the_gateway
        page.route_web_socket(re.compile(r"^ws://wsprism\.test/v1/ws\b.*"), self._handle)

    def _handle(self, ws) -> None:
        conn = Conn(ws, self)
        self.conns.append(conn)
        ws.on_message(lambda raw: self._message(conn, raw))
        self.on_connect(conn)

    def _message(self, conn: Conn, raw) -> None:
        msg = raw if isinstance(raw, bytes) else json.loads(raw)
        conn.received.append(msg)
        self.on_message(conn, msg)

    @property
    def last(self) -> Conn:
        return self.conns[-1]


def answer_like_the_gateway(conn: Conn, msg) -> None:
    if not isinstance(msg, dict):
        return
    kind = (msg.get("svc"), msg.get("type"))
    if kind == ("sys", "ping"):
        conn.sys("pong")
    elif kind == ("room", "join"):
        conn.sys("joined", room=msg["room"])
    elif kind == ("room", "leave"):
        conn.sys("left", room=msg["room"])
