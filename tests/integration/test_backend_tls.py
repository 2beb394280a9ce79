"""SPEC section 10: `gateway.tls` serves wss://, `gateway.api.tls` serves the API over https.

The certificate is self-signed, made in tmp_path with `cryptography`; clients trust it
explicitly. Clients that speak plain text to a TLS port must not hurt the server.
"""
import asyncio
import datetime
import ipaddress
import os
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.client import PING, connect_authed, recv_json, request, run
from tests.integration.test_backend_api import ACME_KEY, call

ENV = "WSPRISM_TEST_TLS_API_KEY"


def make_cert(directory) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsprism-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_file), str(key_file)


YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  tls: {{cert_file: "{cert}", key_file: "{key}"}}
  api:
    listen: "127.0.0.1:0"
    keys: {{acme: {{env: {env}}}}}
    tls: {{cert_file: "{cert}", key_file: "{key}"}}
tenants:
  - id: acme
    policy: {{ext_allowlist: ["room:*", "sys:*"]}}
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def g(gateway_factory, certs):
    os.environ[ENV] = ACME_KEY
    try:
        return gateway_factory(YAML.format(cert=certs[0], key=certs[1], env=ENV))
    finally:
        del os.environ[ENV]


@pytest.fixture(scope="module")
def client_ssl(certs):
    return ssl.create_default_context(cafile=certs[0])


def wss_url(g, user="dev") -> str:
    return g.url("acme", user).replace("ws://", "wss://", 1)


def test_wss_session(g, client_ssl):
    async def main():
        ws, authed = await connect_authed(wss_url(g, "dev:tls-user"), ssl=client_ssl)
        assert authed["data"]["user"] == "tls-user"
        assert (await request(ws, PING))["type"] == "pong"
        await ws.close()
    run(main())


def test_plain_ws_to_the_tls_port_is_refused(g):
    from tests.client import connect

    async def main():
        with pytest.raises(Exception):
            await connect(g.url())
    run(main())


def test_api_over_https_reaches_a_wss_session(g, client_ssl):
    async def main():
        ws, _ = await connect_authed(wss_url(g, "dev:ivy"), ssl=client_ssl)
        body = {"tenant": "acme", "user": "ivy", "svc": "notice", "type": "hi"}
        status, answer = await asyncio.to_thread(call, g, "POST", "/v1/send", body, scheme="https", ssl=client_ssl)
        assert (status, answer) == (200, {"delivered": 1})
        assert await recv_json(ws) == {"v": 1, "svc": "notice", "type": "hi"}
        await ws.close()
    run(main())


def _speak_plain_text(port: int) -> bytes:
    """An HTTP request in clear text to a TLS port; returns whatever came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"GET /v1/ws?tenant=acme&ticket=dev HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        return data


def test_plain_text_clients_do_not_hurt_the_tls_listeners(g, client_ssl):
    upgrades_before = g.call(lambda: g.tenant().stats.upgrades.get("101", 0))
    for _ in range(20):
        answer = _speak_plain_text(g.port)
        assert b"101" not in answer and b"authed" not in answer
        _speak_plain_text(g.gw.api.port)
    # a client that opens TCP and sends garbage bytes, then vanishes
    for port in (g.port, g.gw.api.port):
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(os.urandom(512))
    assert g.call(lambda: g.tenant().stats.upgrades.get("101", 0)) == upgrades_before   # nothing got in
    test_wss_session(g, client_ssl)
    status, answer = call(g, "GET", "/v1/stats?tenant=acme", scheme="https", ssl=client_ssl)
    assert status == 200


def test_https_health_endpoints(g, client_ssl):
    with socket.create_connection(("127.0.0.1", g.port), timeout=3) as raw:
        with client_ssl.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"ok" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"ok" in data


def test_missing_cert_file_fails_startup(gateway_factory, tmp_path):
    yaml = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  tls: {cert_file: "%s/missing.pem", key_file: "%s/missing.key"}
tenants:
  - id: acme
""" % (tmp_path, tmp_path)
    with pytest.raises(OSError):
        gateway_factory(yaml)
