"""The gateway's HTTP client for webhooks (wsprism/backend/http.py), against real servers:
keep-alive reuse, https backends (verified), compressed, chunked and close-delimited
answers, and answers that are not HTTP. SPEC 10's outcomes (timeouts, order, caps,
bombs) are in test_backend_webhook.py; these are the transport details under them."""
import asyncio
import json
import os
import ssl
import time

import pytest

from tests.client import PING, PONG, connect_authed, error_of, recv_json, request, run, send_json
from tests.integration.backend_app import BackendServer, RawServer
from tests.integration.test_backend_tls import make_cert
from wsprism.backend.http import TIMEOUT, UNREACHABLE, BackendFailure, HttpClient

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{"reply":"ok"}'

RAW = {
    # body until the connection closes (no Content-Length, not chunked)
    "eof": [b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{"reply":"eof"}'],
    "chunked": [b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{"repl\r\n'
                b'9\r\ny":"chnk"\r\n1\r\n}\r\n0\r\n\r\n'],
    "not_http": [b"SSH-2.0-OpenSSH_9.6\r\n"],
    "bad_length": [b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n{}"],
    "stale": [OK, None, OK],        # answers once, then closes the kept-alive connection at the next
    # two answers to one request, in one write, then (on a new connection) one
    "double": [OK + b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n'
               b'{"reply":"two"}', OK],
    # an interim 103 Early Hints, then (a moment later, its own segment) the final answer
    "interim": [(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
                 b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n'
                 b'{"reply":"one"}'), OK],
}

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: acme
    policy:
      ext_allowlist: ["sys:*", "ka:*", "tls:*", "untrusted:*", "eof:*", "chunked:*", "not_http:*",
                      "bad_length:*", "stale:*", "double:*", "interim:*"]
      rate_limit_rps: 10000
      rate_limit_burst: 10000
    services:
      ka: {{webhook: "{ka}", timeout_ms: 2000, max_inflight_per_session: 32}}
      tls: {{webhook: "{tls}", timeout_ms: 2000}}
      untrusted: {{webhook: "{untrusted}", timeout_ms: 2000}}
{raw}
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    trusted = make_cert(tmp_path_factory.mktemp("ca"))
    other = make_cert(tmp_path_factory.mktemp("other"))

    def tls_server(cert):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*cert)
        return BackendServer(ssl=ctx)

    out = {"ka": BackendServer(), "tls": tls_server(trusted), "untrusted": tls_server(other)}
    out.update({name: RawServer(answers) for name, answers in RAW.items()})
    out["_ca"] = trusted[0]
    yield out
    for name, s in out.items():
        if name != "_ca":
            s.stop()


@pytest.fixture(scope="module")
def g(gateway_factory, servers):
    raw = "\n".join(f'      {name}: {{webhook: "{servers[name].url()}", timeout_ms: 1000}}' for name in RAW)
    old = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = servers["_ca"]     # the system CA store, as far as the gateway knows
    try:
        yield gateway_factory(YAML.format(ka=servers["ka"].url("/svc"), tls=servers["tls"].url("/svc"),
                                          untrusted=servers["untrusted"].url("/svc"), raw=raw))
    finally:
        if old is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = old


def msg(svc, seq, do=None):
    m = {"v": 1, "svc": svc, "type": "t", "seq": seq}
    if do is not None:
        m["data"] = {"do": do}
    return m


def outcomes(g, svc) -> dict:
    return g.call(lambda: dict(g.tenant().forwarders[svc].outcomes))


def test_keep_alive_one_connection_for_a_sequence(g, servers):
    backend = servers["ka"]
    first = len(backend.peers)

    async def main():
        ws, _ = await connect_authed(g.url())
        for seq in range(1, 21):
            await send_json(ws, msg("ka", seq, {"answer": {"reply": seq}}))
        got = [await recv_json(ws) for _ in range(20)]
        assert [m["data"] for m in got] == list(range(1, 21))
        await ws.close()
    run(main())
    assert len(set(backend.peers[first:])) == 1      # one session's messages go one at a time


@pytest.mark.parametrize("encoding", ["gz", "deflate"])
def test_compressed_answers_are_decoded(g, encoding):
    async def main():
        ws, _ = await connect_authed(g.url())
        reply = await request(ws, msg("ka", 3, {encoding: {"reply": {"enc": encoding}}}))
        assert reply == {"v": 1, "svc": "ka", "type": "reply", "seq": 3, "data": {"enc": encoding}}
        await ws.close()
    run(main())


def test_https_backend_is_verified_against_the_ca_store(g):
    async def main():
        ws, _ = await connect_authed(g.url())
        reply = await request(ws, msg("tls", 1, {"answer": {"reply": "over tls"}}))
        assert reply["data"] == "over tls"
        bad = await request(ws, msg("untrusted", 2, {"answer": {"reply": "x"}}))
        assert error_of(bad) == "INTERNAL" and bad["seq"] == 2
        assert await request(ws, PING) == PONG
        await ws.close()
    run(main())
    assert outcomes(g, "tls")["ok"] == 1
    assert outcomes(g, "untrusted")["unreachable"] == 1


@pytest.mark.parametrize("svc, data", [("eof", "eof"), ("chunked", "chnk")])
def test_close_delimited_and_chunked_answers(g, svc, data):
    async def main():
        ws, _ = await connect_authed(g.url())
        reply = await request(ws, msg(svc, 5))
        assert reply == {"v": 1, "svc": svc, "type": "reply", "seq": 5, "data": data}
        await ws.close()
    run(main())


@pytest.mark.parametrize("svc", ["not_http", "bad_length"])
def test_an_answer_that_is_not_http_is_internal(g, svc):
    async def main():
        ws, _ = await connect_authed(g.url())
        bad = await request(ws, msg(svc, 6))
        assert error_of(bad) == "INTERNAL" and bad["seq"] == 6
        assert await request(ws, PING) == PONG
        await ws.close()
    run(main())
    assert outcomes(g, svc)["unreachable"] == 1


def test_a_kept_alive_connection_closed_by_the_backend_is_not_retried(g, servers):
    """The backend may have acted on a request it closed on: it is INTERNAL, never sent twice;
    the next message opens a new connection."""
    async def main():
        ws, _ = await connect_authed(g.url())
        assert (await request(ws, msg("stale", 1)))["data"] == "ok"
        second = await request(ws, msg("stale", 2))
        assert error_of(second) == "INTERNAL" and second["seq"] == 2
        assert (await request(ws, msg("stale", 3)))["data"] == "ok"
        await ws.close()
    run(main())
    assert servers["stale"].connections == 2
    assert servers["stale"].answers == []
    assert outcomes(g, "stale")["unreachable"] == 1


def test_a_second_answer_to_one_request_is_never_taken_for_the_next(g, servers):
    """The first answer stands; the connection that carried the extra one is closed, so the
    next message (posted from the first one's answer callback) gets its own answer on a
    new connection."""
    async def main():
        ws, _ = await connect_authed(g.url())
        await send_json(ws, msg("double", 1))
        await send_json(ws, msg("double", 2))
        first, second = await recv_json(ws), await recv_json(ws)
        assert (first["seq"], first["data"]) == (1, "ok")
        assert (second["seq"], second["data"]) == (2, "ok")
        await ws.close()
    run(main())
    assert servers["double"].connections == 2
    assert outcomes(g, "double")["ok"] == 2


def test_an_interim_answer_is_not_the_answer(g, servers):
    """A 1xx (here 103 Early Hints) is followed by the final answer on the same connection:
    the message gets the final one, and the next message (posted from its answer callback
    on that connection) its own, never the first one's."""
    async def main():
        ws, _ = await connect_authed(g.url())
        await send_json(ws, msg("interim", 1))
        await send_json(ws, msg("interim", 2))
        first, second = await recv_json(ws), await recv_json(ws)
        assert (first["seq"], first["type"], first["data"]) == (1, "reply", "one")
        assert (second["seq"], second["type"], second["data"]) == (2, "reply", "ok")
        await ws.close()
    run(main())
    assert servers["interim"].connections == 1
    assert outcomes(g, "interim")["ok"] == 2


def test_a_connection_handed_to_a_waiter_that_gives_up_goes_back_to_the_pool(servers, monkeypatch):
    """At the per-backend cap a request waits for a connection; when one is handed to it in
    the loop turn its wait ends (deadline or cancel), the connection is passed on, not lost
    (it would stay open, neither idle nor busy, holding its slot for good)."""
    from wsprism.backend import http as http_mod
    monkeypatch.setattr(http_mod, "CONNECTIONS_PER_HOST", 1)
    url = servers["ka"].url("/svc")
    body = json.dumps({"tenant": "t", "user": "u", "sid": "s", "trace_id": "x-1",
                       "msg": {"v": 1, "svc": "ka", "type": "t", "data": {"do": {"answer": {"reply": 1}}}}}).encode()

    async def main():
        loop = asyncio.get_running_loop()
        client = HttpClient()
        assert (await client.post_json(url, body, loop.time() + 2, 1 << 20))[0] == 200
        target = next(iter(client._targets.values()))
        conn = client._take_idle(target)              # the pool's one connection, busy now
        waiter = loop.create_task(client._acquire(target, loop.time() + 2, loop))   # what post waits in
        await asyncio.sleep(0.05)
        assert len(target.waiters) == 1
        client._release(conn)                         # handed to the waiter ...
        waiter.cancel()                               # ... which gives up in the same turn
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (target.open, len(target.idle)) == (1, 1)
        status, answer = await client.post_json(url, body, loop.time() + 2, 1 << 20)
        assert status == 200 and json.loads(answer) == {"reply": 1}
        await client.close()
    run(main())


def test_post_calls_back_once_never_from_inside_and_close_fails_what_is_at_a_backend(servers):
    """HttpClient.post (the forwarder's call): the callback comes later, once; a request at
    the backend when the client closes is failed then (not left waiting for its timeout)."""
    url = servers["ka"].url("/svc")

    def body(do):
        return json.dumps({"tenant": "t", "user": "u", "sid": "s", "trace_id": "x-1",
                           "msg": {"v": 1, "svc": "ka", "type": "t", "data": {"do": do}}}).encode()

    async def main():
        loop = asyncio.get_running_loop()
        client = HttpClient()
        got: list = []

        def done(result):
            got.append(result)
        client.post(url, body({"answer": {"reply": 1}}), loop.time() + 2, 1 << 20, done)
        assert got == []                                  # opening a connection: later
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.01)
        assert len(got) == 1 and got[0][0] == 200 and json.loads(got[0][1]) == {"reply": 1}
        got.clear()
        client.post(url, body({"answer": {"reply": 2}}), loop.time() + 2, 1 << 20, done)
        assert got == []                                  # on the kept-alive connection: written now, answered later
        while not got:
            await asyncio.sleep(0.01)
        assert json.loads(got[0][1]) == {"reply": 2}
        got.clear()
        client.post(url, body({"sleep": 5}), loop.time() + 0.3, 1 << 20, done)
        await asyncio.sleep(0.5)
        assert len(got) == 1 and isinstance(got[0], BackendFailure) and got[0].outcome == TIMEOUT
        got.clear()
        client.post(url, body({"sleep": 5}), loop.time() + 10, 1 << 20, done)
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await client.close()
        assert len(got) == 1 and isinstance(got[0], BackendFailure) and got[0].outcome == UNREACHABLE
        assert time.monotonic() - t0 < 1.0
        got.clear()
        client.post(url, body({"answer": {"reply": 3}}), loop.time() + 2, 1 << 20, done)
        assert got == []                                  # closed: refused, but still from a callback
        await asyncio.sleep(0.05)
        assert len(got) == 1 and got[0].outcome == UNREACHABLE
        await asyncio.sleep(0.1)
        assert len(got) == 1                              # once
    run(main())
