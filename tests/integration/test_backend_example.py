"""examples/backend.py with examples/wsprism-backend.yaml, end to end (docs/backend.md)."""
import importlib.util
import os
from pathlib import Path

import pytest

from tests.client import connect, connect_authed, error_of, expect_close, recv_json, request, run, send_json
from tests.integration.backend_app import AppThread, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEY = "example-key-0123456789abcdef"


def load_example():
    spec = importlib.util.spec_from_file_location("example_backend", EXAMPLES / "backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def g(gateway_factory):
    api_port = free_port()
    example = load_example()
    backend = AppThread(lambda: example.make_app(f"http://127.0.0.1:{api_port}", KEY))
    yaml = (EXAMPLES / "wsprism-backend.yaml").read_text()
    yaml = yaml.replace("127.0.0.1:8080", "127.0.0.1:0").replace("127.0.0.1:8090", f"127.0.0.1:{api_port}")
    yaml = yaml.replace("127.0.0.1:9000", f"127.0.0.1:{backend.port}")
    os.environ["DEMO_API_KEY"] = KEY
    try:
        yield gateway_factory(yaml)
    finally:
        del os.environ["DEMO_API_KEY"]
        backend.stop()


JOIN = {"v": 1, "svc": "room", "type": "join", "room": "lobby"}


def say(text, **extra):
    return {"v": 1, "svc": "bot", "type": "say", "room": "lobby", "data": {"text": text}, **extra}


def test_chat_with_the_bot(g):
    async def main():
        alice, authed = await connect_authed(g.url("demo", "demo:alice"))
        assert authed["data"]["user"] == "alice"
        bob, _ = await connect_authed(g.url("demo", "demo:bob"))
        for ws in (alice, bob):
            assert (await request(ws, JOIN))["type"] == "joined"
        await send_json(alice, say("hello", seq=1, flags=4))
        hello = {"v": 1, "svc": "bot", "type": "said", "room": "lobby", "data": {"from": "alice", "text": "hello"}}
        assert await recv_json(alice) == hello
        assert await recv_json(alice) == {"v": 1, "svc": "sys", "type": "ack", "seq": 1}
        assert await recv_json(bob) == hello
        await send_json(bob, say("!roll"))
        for ws in (alice, bob):
            assert (await recv_json(ws))["data"]["text"] == "!roll"
            rolled = await recv_json(ws)
            assert rolled["data"]["from"] == "bot" and rolled["data"]["text"].startswith("bob rolled a ")
        await send_json(alice, say("!who", seq=2))
        assert (await recv_json(alice))["data"]["text"] == "!who"
        reply = await recv_json(alice)
        assert reply["type"] == "reply" and reply["seq"] == 2
        assert reply["data"]["count"] == 2 and sorted(reply["data"]["users"]) == ["alice", "bob"]
        assert (await recv_json(bob))["data"]["text"] == "!who"
        msg = await request(alice, {"v": 1, "svc": "bot", "type": "say", "seq": 3, "data": {"text": "x"}})
        assert error_of(msg) == "BAD_REQUEST" and msg["seq"] == 3
        help_ = await request(alice, {"v": 1, "svc": "bot", "type": "help"})
        assert help_["type"] == "reply" and len(help_["data"]) == 3
        for ws in (alice, bob):
            await ws.close()
    run(main())


def test_unknown_ticket_is_refused(g):
    async def main():
        ws = await connect(g.url("demo", "guest"))
        assert error_of(await recv_json(ws)) == "AUTH_FAILED"
        assert await expect_close(ws) == 4007
    run(main())
