"""RFC 6455 strictness (SPEC 14) and HTTP methods (issue 10), over raw sockets: reserved
bits, close codes and close payloads, the upgrade's Host / Sec-WebSocket-Version /
Sec-WebSocket-Key, and requests other than GET. After each case the gateway still
answers /healthz and a well-behaved session on the same gateway still answers ping."""
import base64
import json
import socket

import pytest

from tests.client import (
    PING, PONG, TIMEOUT, UPGRADE_HEADERS, close_code_of, connect_authed, http_raw, mask_frame,
    raw_upgrade, read_frames, request, run,
)

PING_TEXT = json.dumps(PING).encode()


@pytest.fixture(scope="module")
def g(gateway_factory):
    return gateway_factory()


def still_fine(g) -> None:
    status, _, body = http_raw(g.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"ok\n")

    async def main():
        ws, _ = await connect_authed(g.url(ticket="dev:canary"))
        assert await request(ws, PING) == PONG
        await ws.close()
    run(main())


def upgrade_request(port: int, headers: list[tuple[str, str]] | None = None, target: str = "/v1/ws?tenant=acme&ticket=dev",
                    method: str = "GET") -> bytes:
    if headers is None:
        headers = [("Host", f"127.0.0.1:{port}")] + list(UPGRADE_HEADERS.items())
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def without(port: int, name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in [("Host", f"127.0.0.1:{port}")] + list(UPGRADE_HEADERS.items()) if k != name]


def frame(b0: int, payload: bytes) -> bytes:
    """A masked client frame with first byte `b0` (FIN, RSV bits, opcode as given)."""
    return bytes([b0]) + mask_frame(0, payload)[1:]


def closed_with(s: socket.socket, timeout: float = 2.0) -> int | None:
    frames = read_frames(s, timeout)
    s.close()
    return close_code_of(frames)


# -- reserved bits -------------------------------------------------------------------------

@pytest.mark.parametrize("b0,payload", [
    (0xC1, PING_TEXT),                 # RSV1 on a text frame: the issue's `c1 a1` + sys:ping
    (0xA1, PING_TEXT),                 # RSV2
    (0x91, PING_TEXT),                 # RSV3
    (0xF2, b"\x01\x01\x00"),           # all three on a binary frame
    (0xC9, b"hi"),                     # RSV1 on a ping: not answered with a pong
    (0x98, (1000).to_bytes(2, "big")),  # RSV3 on a close
    (0x41, PING_TEXT),                 # RSV1 on the first fragment of a message
])
def test_reserved_bits_close_1002(g, b0, payload):
    s = raw_upgrade(g.port, "tenant=acme&ticket=dev:rsv")
    s.sendall(frame(b0, payload))
    frames = read_frames(s, 2.0)
    s.close()
    assert close_code_of(frames) == 1002
    assert not any(op in (1, 0xA) for op, p in frames if b"authed" not in p), frames   # no pong of any kind
    still_fine(g)


def test_reserved_bit_on_a_continuation_closes_1002(g):
    s = raw_upgrade(g.port, "tenant=acme&ticket=dev:rsv")
    s.sendall(mask_frame(1, PING_TEXT[:5], fin=False) + frame(0xC0, PING_TEXT[5:]))
    assert closed_with(s) == 1002


def test_a_plain_ping_is_still_ponged(g):
    s = raw_upgrade(g.port, "tenant=acme&ticket=dev:pinger")
    s.sendall(mask_frame(9, b"are you there"))
    frames = read_frames(s, 0.5)
    s.close()
    assert (0xA, b"are you there") in frames


# -- close frames ----------------------------------------------------------------------------

@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_a_close_code_a_client_must_not_send_is_1002(g, code):
    s = raw_upgrade(g.port, "tenant=acme&ticket=dev:closer")
    s.sendall(mask_frame(8, code.to_bytes(2, "big") + b"bye"))
    assert closed_with(s) == 1002
    still_fine(g)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                                  3000, 4000, 4999])
def test_a_valid_close_code_is_answered_with_the_same_code(g, code):
    s = raw_upgrade(g.port, "tenant=acme&ticket=dev:closer")
    s.sendall(mask_frame(8, code.to_bytes(2, "big")))
    assert closed_with(s) == code


def test_close_without_a_code_is_answered_1000(g):
    s = raw_upgrade(g.port, "tenant=acme&ticket=dev:closer")
    s.sendall(mask_frame(8, b""))
    assert closed_with(s) == 1000


def test_a_one_byte_close_payload_is_1002(g):
    s = raw_upgrade(g.port, "tenant=acme&ticket=dev:closer")
    s.sendall(mask_frame(8, b"\x03"))
    assert closed_with(s) == 1002
    still_fine(g)


def test_a_close_reason_that_is_not_utf8_is_1007(g):
    s = raw_upgrade(g.port, "tenant=acme&ticket=dev:closer")
    s.sendall(mask_frame(8, (1000).to_bytes(2, "big") + b"\xff\xfe"))
    assert closed_with(s) == 1007


# -- the upgrade request ---------------------------------------------------------------------

@pytest.mark.parametrize("version", ["7", "8", "12", "14", "", "13, 8", "thirteen"])
def test_websocket_version_other_than_13_is_426_naming_13(g, version):
    headers = without(g.port, "Sec-WebSocket-Version") + [("Sec-WebSocket-Version", version)]
    status, hdrs, body = http_raw(g.port, upgrade_request(g.port, headers))
    assert status == 426 and hdrs["sec-websocket-version"] == "13", (status, hdrs, body)
    assert b"13" in body


def test_missing_or_repeated_websocket_version_is_426(g):
    status, hdrs, _ = http_raw(g.port, upgrade_request(g.port, without(g.port, "Sec-WebSocket-Version")))
    assert status == 426 and hdrs["sec-websocket-version"] == "13"
    twice = without(g.port, "Sec-WebSocket-Version") + [("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Version", "8")]
    status, hdrs, _ = http_raw(g.port, upgrade_request(g.port, twice))
    assert status == 426 and hdrs["sec-websocket-version"] == "13"


@pytest.mark.parametrize("keys", [
    [],                                                            # missing
    ["dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=="],     # duplicated (same value)
    ["dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA=="],     # duplicated (two values)
    [""],
    ["short"],
    ["dGhlIHNhbXBsZSBub25jZQ"],                                     # padding missing
    [base64.b64encode(b"x" * 15).decode()],                        # 15 bytes
    [base64.b64encode(b"x" * 17).decode()],                        # 17 bytes
    ["dGhlIHNhbXBsZSBub25j*Q=="],                                  # not base64
    ["\u00e9" * 24],
])
def test_missing_duplicated_or_malformed_key_is_400(g, keys):
    headers = without(g.port, "Sec-WebSocket-Key") + [("Sec-WebSocket-Key", k) for k in keys]
    status, _, body = http_raw(g.port, upgrade_request(g.port, headers))
    assert status == 400, body


@pytest.mark.parametrize("hosts", [[], ["127.0.0.1", "127.0.0.1"], ["a.example", "b.example"], [""]])
def test_missing_or_duplicated_host_is_400(g, hosts):
    headers = without(g.port, "Host") + [("Host", h) for h in hosts]
    status, _, body = http_raw(g.port, upgrade_request(g.port, headers))
    assert status == 400, body


def test_a_correct_upgrade_still_switches(g):
    s = socket.create_connection(("127.0.0.1", g.port), timeout=TIMEOUT)
    s.sendall(upgrade_request(g.port))
    assert s.recv(12) == b"HTTP/1.1 101"
    s.close()


def test_refusals_are_counted_as_bad_request(g):
    before = g.call(lambda: (g.gw.unknown_stats.handshake_rejections["bad_request"],
                             g.gw.unknown_stats.upgrades.get("426", 0)))
    http_raw(g.port, upgrade_request(g.port, without(g.port, "Host")))
    headers = without(g.port, "Sec-WebSocket-Version") + [("Sec-WebSocket-Version", "8")]
    http_raw(g.port, upgrade_request(g.port, headers))
    after = g.call(lambda: (g.gw.unknown_stats.handshake_rejections["bad_request"],
                            g.gw.unknown_stats.upgrades.get("426", 0)))
    assert after == (before[0] + 2, before[1] + 1)


# -- methods other than GET --------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "CONNECT"])
@pytest.mark.parametrize("target", ["/v1/ws?tenant=acme&ticket=dev", "/healthz", "/readyz", "/metrics", "/nope"])
def test_a_method_other_than_get_is_405_allow_get(g, method, target):
    status, headers, body = http_raw(g.port, upgrade_request(g.port, target=target, method=method))
    assert status == 405 and headers["allow"] == "GET" and headers["connection"] == "close", (status, headers)
    assert b"GET" in body
    still_fine(g)


def test_post_publish_on_the_gateway_port_is_405(g):
    """The server API's path (on its own listener) sent to the gateway's port by mistake:
    405 Allow: GET, and the body says where the API is (not picows' 400)."""
    body = b'{"tenant":"acme","room":"r","svc":"chat","type":"msg","data":{}}'
    req = (b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
    status, headers, answer = http_raw(g.port, req)
    assert status == 405 and headers["allow"] == "GET"
    assert b"gateway.api.listen" in answer


def test_get_on_an_unknown_path_is_still_404(g):
    status, headers, _ = http_raw(g.port, b"GET /v1/publish HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404 and "allow" not in headers


def test_a_request_line_split_over_reads_is_still_answered_405(g):
    with socket.create_connection(("127.0.0.1", g.port), timeout=TIMEOUT) as s:
        for part in (b"PO", b"ST /hea", b"lthz HTT", b"P/1.1\r\nHost: x\r\n\r\n"):
            s.sendall(part)
            import time
            time.sleep(0.05)
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 405")


def test_405_on_the_ws_path_is_counted(g):
    before = g.call(lambda: g.gw.unknown_stats.upgrades.get("405", 0))
    http_raw(g.port, upgrade_request(g.port, method="POST"))
    assert g.call(lambda: g.gw.unknown_stats.upgrades.get("405", 0)) == before + 1
