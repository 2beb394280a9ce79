"""SPEC sections 1 and 14: static and jwt auth end to end, expiry (4001), sys:refresh,
and tickets never written to the gateway's logs."""
import asyncio
import logging
import os
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.client import PONG, UPGRADE_HEADERS, connect_authed, error_of, expect_close, http_get, request, run

SECRET_ENV = "WSPRISM_TEST_AUTH_HS_SECRET"
SECRET = "s3cr3t-for-the-auth-tests-0123456789abcdef"
STATIC_A = "tk-alice-5b7e0c1d9f"
STATIC_B = "tk-bob-a41c6e2f08"


YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
tenants:
  - id: stat
    auth: {{mode: static, tickets: {{{a}: alice, {b}: bob}}}}
  - id: hs
    auth: {{mode: jwt, algorithms: [HS256], secret_env: {env}}}
  - id: hsaud
    auth: {{mode: jwt, algorithms: [HS256], secret_env: {env}, audience: my-app, issuer: "https://issuer.example"}}
  - id: hsnoexp
    auth: {{mode: jwt, algorithms: [HS256], secret_env: {env}, require_exp: false}}
  - id: hsstrict
    auth: {{mode: jwt, algorithms: [HS256], secret_env: {env}, leeway_ms: 0}}
  - id: rs
    auth: {{mode: jwt, algorithms: [RS256], public_key_file: "{rs_pub}"}}
  - id: es
    auth: {{mode: jwt, algorithms: [ES256], public_key_file: "{es_pub}"}}
"""


class Keys:
    pass


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    k = Keys()
    k.rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k.rs_other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k.es = ec.generate_private_key(ec.SECP256R1())
    k.es_other = ec.generate_private_key(ec.SECP256R1())
    k.rs_pub = d / "rs.pem"
    k.es_pub = d / "es.pem"
    for key, path in ((k.rs, k.rs_pub), (k.es, k.es_pub)):
        path.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return k


@pytest.fixture(scope="module")
def g(gateway_factory, keys):
    # the HS256 secret comes from the environment: set it before the gateway starts
    old = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = SECRET
    try:
        yield gateway_factory(YAML.format(a=STATIC_A, b=STATIC_B, env=SECRET_ENV,
                                          rs_pub=keys.rs_pub, es_pub=keys.es_pub))
    finally:
        if old is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = old


# -- helpers -------------------------------------------------------------------------

def hs(claims: dict, secret: str = SECRET, **kw) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", **kw)


def claims(sub="alice", ttl: float | None = 600, **extra) -> dict:
    c = {"sub": sub} if sub is not None else {}
    if ttl is not None:
        c["exp"] = int(time.time() + ttl)
    c.update(extra)
    return c


def status_of(g, tenant: str, ticket: str) -> int:
    """The HTTP status of the upgrade. Only used for refusals: a 101 keeps the socket open."""
    status, _, _ = http_get(g.port, f"/v1/ws?tenant={tenant}&ticket={ticket}", UPGRADE_HEADERS)
    return status


async def user_of(g, tenant: str, ticket: str) -> str:
    ws, authed = await connect_authed(g.url(tenant, ticket))
    assert authed["data"]["tenant"] == tenant
    await ws.close()
    return authed["data"]["user"]


def accepted_as(g, tenant: str, ticket: str) -> str:
    return run(user_of(g, tenant, ticket))


async def refresh(ws, ticket, **extra) -> dict:
    return await request(ws, {"v": 1, "svc": "sys", "type": "refresh", "data": {"ticket": ticket}, **extra})


async def ping(ws) -> dict:
    return await request(ws, {"v": 1, "svc": "sys", "type": "ping"})


# -- static ----------------------------------------------------------------------------

def test_static_tickets_map_to_users(g):
    assert accepted_as(g, "stat", STATIC_A) == "alice"
    assert accepted_as(g, "stat", STATIC_B) == "bob"


@pytest.mark.parametrize("ticket", ["dev", "alice", "tk-alice-5b7e0c1d9F", STATIC_A + "x", STATIC_A[:-1]])
def test_static_unknown_ticket_is_401(g, ticket):
    assert status_of(g, "stat", ticket) == 401


def test_static_refresh_same_user_and_other_user(g):
    async def main():
        ws, _ = await connect_authed(g.url("stat", STATIC_A))
        ok = await refresh(ws, STATIC_A)
        assert (ok["svc"], ok["type"]) == ("sys", "refreshed")
        err = await refresh(ws, STATIC_B, seq=3)
        assert error_of(err) == "AUTH_FAILED" and err["seq"] == 3
        err = await refresh(ws, "nope")
        assert error_of(err) == "AUTH_FAILED"
        assert await ping(ws) == PONG
        assert g.call(lambda: [s.user for s in g.tenant("stat").sessions.all_sessions()]) == ["alice"]
        await ws.close()
    run(main())


# -- jwt: HS256 ------------------------------------------------------------------------

def test_hs256_sub_is_the_user(g):
    assert accepted_as(g, "hs", hs(claims("alice"))) == "alice"
    assert accepted_as(g, "hs", hs(claims("user@example.com:42"))) == "user@example.com:42"


def test_hs256_refusals_are_401(g):
    now = int(time.time())
    cases = {
        "wrong secret": hs(claims(), secret="not-the-secret-0123456789abcdef012345"),
        "expired": hs(claims(ttl=-60)),
        "nbf in the future": hs(claims(nbf=now + 60)),
        "no sub": hs(claims(sub=None)),
        "empty sub": hs(claims(sub="")),
        "sub not a string": hs({"sub": 42, "exp": now + 600}),
        "no exp": hs(claims(ttl=None)),
        "exp not a number": hs({"sub": "alice", "exp": "tomorrow"}),
        "not a JWT": "not.a.jwt",
        "not even dots": "garbage",
        "alg none": jwt.encode(claims(), None, algorithm="none"),
        "truncated signature": hs(claims())[:-4],
        "payload swapped": _swap_payload(hs(claims("alice")), hs(claims("mallory"))),
    }
    for why, token in cases.items():
        assert status_of(g, "hs", token) == 401, why


def _swap_payload(good: str, other: str) -> str:
    h, _, s = good.split(".")
    return ".".join((h, other.split(".")[1], s))


def test_rs256_token_is_refused_by_an_hs256_tenant(g, keys):
    token = jwt.encode(claims(), keys.rs, algorithm="RS256")
    assert status_of(g, "hs", token) == 401


def test_missing_exp_accepted_when_not_required(g):
    assert accepted_as(g, "hsnoexp", hs(claims("free", ttl=None))) == "free"
    # an exp that is there is still checked
    assert status_of(g, "hsnoexp", hs(claims("free", ttl=-60))) == 401


def test_audience_and_issuer_checked_when_configured(g):
    iss = "https://issuer.example"
    assert accepted_as(g, "hsaud", hs(claims(aud="my-app", iss=iss))) == "alice"
    assert accepted_as(g, "hsaud", hs(claims(aud=["other", "my-app"], iss=iss))) == "alice"
    for why, c in {
        "wrong aud": claims(aud="other-app", iss=iss),
        "no aud": claims(iss=iss),
        "wrong iss": claims(aud="my-app", iss="https://evil.example"),
        "no iss": claims(aud="my-app"),
    }.items():
        assert status_of(g, "hsaud", hs(c)) == 401, why
    # a tenant without audience/issuer configured does not look at them
    assert accepted_as(g, "hs", hs(claims(aud="whatever", iss="anyone"))) == "alice"


def test_leeway_is_honoured(g):
    now = int(time.time())
    # default leeway 5 s: a token 2 s past exp or 2 s before nbf is still accepted
    assert accepted_as(g, "hs", hs({"sub": "late", "exp": now - 2})) == "late"
    assert accepted_as(g, "hs", hs(claims("early", nbf=now + 2))) == "early"
    # ... but not far beyond it
    assert status_of(g, "hs", hs({"sub": "late", "exp": now - 30})) == 401
    assert status_of(g, "hs", hs(claims("early", nbf=now + 30))) == 401
    # leeway_ms: 0 refuses both
    assert status_of(g, "hsstrict", hs({"sub": "late", "exp": now - 2})) == 401
    assert status_of(g, "hsstrict", hs(claims("early", nbf=now + 2))) == 401
    assert accepted_as(g, "hsstrict", hs(claims("ontime"))) == "ontime"


def test_session_accepted_within_the_leeway_is_not_closed_at_once(g):
    """A token the gateway accepts only thanks to the leeway is expired by the same rule
    (exp + leeway), not by exp alone: otherwise it is greeted and closed 4001 in the same
    instant, which no client can do anything with."""
    async def main():
        exp = int(time.time()) - 3          # 3 to 4 s ago; leeway 5 s → 1 to 2 s left
        ws, _ = await connect_authed(g.url("hs", hs({"sub": "skewed", "exp": exp})))
        assert await ping(ws) == PONG
        assert await expect_close(ws, timeout=exp + 5 - time.time() + 1.5) == 4001
        assert time.time() >= exp + 5 - 0.5
    run(main())


# -- jwt: RS256, ES256 -----------------------------------------------------------------

def test_rs256(g, keys):
    assert accepted_as(g, "rs", jwt.encode(claims("rsa-user"), keys.rs, algorithm="RS256")) == "rsa-user"
    assert status_of(g, "rs", jwt.encode(claims(), keys.rs_other, algorithm="RS256")) == 401
    assert status_of(g, "rs", jwt.encode(claims(ttl=-60), keys.rs, algorithm="RS256")) == 401
    assert status_of(g, "rs", jwt.encode(claims(sub=None), keys.rs, algorithm="RS256")) == 401
    # algorithm confusion: the public key used as an HMAC secret
    pem = keys.rs_pub.read_bytes()
    forged = _hmac_token(claims(), pem)
    assert status_of(g, "rs", forged) == 401
    assert status_of(g, "rs", hs(claims())) == 401


def test_es256(g, keys):
    assert accepted_as(g, "es", jwt.encode(claims("ec-user"), keys.es, algorithm="ES256")) == "ec-user"
    assert status_of(g, "es", jwt.encode(claims(), keys.es_other, algorithm="ES256")) == 401
    assert status_of(g, "es", jwt.encode(claims(nbf=int(time.time()) + 60), keys.es, algorithm="ES256")) == 401
    assert status_of(g, "es", jwt.encode(claims(), keys.rs, algorithm="RS256")) == 401


def _hmac_token(payload: dict, key: bytes) -> str:
    """HS256 by hand (PyJWT refuses a PEM as an HMAC key, an attacker would not)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(payload).encode())
    sig = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


def test_long_rs256_token_fits_the_ticket_limit(g, keys):
    big = jwt.encode(claims("rsa-user", roles=["r" * 40] * 40), keys.rs, algorithm="RS256")
    assert 2000 < len(big) <= 4096
    assert accepted_as(g, "rs", big) == "rsa-user"


# -- expiry and refresh ----------------------------------------------------------------

def test_expiry_refresh_and_refusals(g, keys):
    """Four sessions whose tokens expire ~2 s from now, run side by side:
    untouched → 4001; refreshed → survives; bad refresh → 4001; other user's token → 4001.
    (Tenant hsstrict: leeway 0, so the token's exp is the session's deadline.)"""
    T = "hsstrict"

    async def expires_untouched(exp):
        ws, _ = await connect_authed(g.url(T, hs({"sub": "exp-a", "exp": exp})))
        assert await ping(ws) == PONG
        code = await expect_close(ws, timeout=exp - time.time() + 3)
        return code, time.time()

    async def refreshed(exp):
        ws, _ = await connect_authed(g.url(T, hs({"sub": "exp-b", "exp": exp})))
        new_exp = int(time.time()) + 120
        msg = await refresh(ws, hs({"sub": "exp-b", "exp": new_exp}))
        assert msg == {"v": 1, "svc": "sys", "type": "refreshed", "data": {"exp": new_exp}}
        await asyncio.sleep(max(0.0, exp - time.time()) + 1.0)
        assert await ping(ws) == PONG          # past the old expiry, still open
        assert g.call(lambda: [s.ticket_exp for s in g.tenant(T).sessions.sessions_of("exp-b")]) == [new_exp]
        await ws.close()
        return True

    async def bad_refresh(exp):
        ws, _ = await connect_authed(g.url(T, hs({"sub": "exp-c", "exp": exp})))
        for token in (
            "garbage",
            hs({"sub": "exp-c", "exp": int(time.time()) + 120}, secret="wrong-secret-0123456789abcdef0123"),
            hs({"sub": "exp-c", "exp": int(time.time()) - 60}),
            hs({"sub": "exp-c"}),                         # no exp, required here
            hs({"exp": int(time.time()) + 120}),          # no sub
        ):
            err = await refresh(ws, token, seq=4)
            assert error_of(err) == "AUTH_FAILED" and err["seq"] == 4
        assert await ping(ws) == PONG
        code = await expect_close(ws, timeout=exp - time.time() + 3)
        return code, time.time()

    async def other_user(exp):
        ws, _ = await connect_authed(g.url(T, hs({"sub": "exp-d", "exp": exp})))
        err = await refresh(ws, hs({"sub": "mallory", "exp": int(time.time()) + 120}))
        assert error_of(err) == "AUTH_FAILED"
        assert g.call(lambda: [s.user for s in g.tenant(T).sessions.sessions_of("exp-d")]) == ["exp-d"]
        assert g.call(lambda: g.tenant(T).sessions.sessions_of("mallory")) == []
        code = await expect_close(ws, timeout=exp - time.time() + 3)
        return code, time.time()

    async def main():
        exp = int(time.time()) + 3       # whole seconds: 2 to 3 s from now
        results = await asyncio.gather(expires_untouched(exp), refreshed(exp), bad_refresh(exp), other_user(exp))
        for code, closed_at in (results[0], results[2], results[3]):
            assert code == 4001
            assert exp - 0.5 <= closed_at <= exp + 1.5
        assert results[1] is True
    run(main())


def test_refresh_input_errors(g):
    async def main():
        ws, _ = await connect_authed(g.url("hs", hs(claims("inp"))))
        for data in (None, {}, {"ticket": 5}, {"ticket": None}, "token", ["token"]):
            msg = {"v": 1, "svc": "sys", "type": "refresh", "seq": 1}
            if data is not None:
                msg["data"] = data
            err = await request(ws, msg)
            assert error_of(err) == "BAD_REQUEST", data
            assert err["seq"] == 1
        assert await ping(ws) == PONG
        await ws.close()
    run(main())


def test_refresh_without_exp_when_not_required_clears_the_expiry(g):
    async def main():
        ws, _ = await connect_authed(g.url("hsnoexp", hs(claims("nx", ttl=600))))
        msg = await refresh(ws, hs(claims("nx", ttl=None)))
        assert (msg["type"], msg["data"]) == ("refreshed", {"exp": None})
        assert g.call(lambda: g.tenant("hsnoexp").sessions.sessions_of("nx")[0].exp_handle) is None
        await ws.close()
    run(main())


def test_rs256_and_es256_refresh(g, keys):
    async def main():
        for tenant, key, alg in (("rs", keys.rs, "RS256"), ("es", keys.es, "ES256")):
            ws, _ = await connect_authed(g.url(tenant, jwt.encode(claims("k"), key, algorithm=alg)))
            new_exp = int(time.time()) + 900
            msg = await refresh(ws, jwt.encode({"sub": "k", "exp": new_exp}, key, algorithm=alg))
            assert msg == {"v": 1, "svc": "sys", "type": "refreshed", "data": {"exp": new_exp}}
            other = keys.rs_other if alg == "RS256" else keys.es_other
            err = await refresh(ws, jwt.encode(claims("k"), other, algorithm=alg))
            assert error_of(err) == "AUTH_FAILED"
            await ws.close()
    run(main())


# -- secrets stay out of the logs ------------------------------------------------------

def test_tickets_never_reach_the_logs(g, keys, caplog):
    tickets = [
        STATIC_A,
        "tk-unknown-3e9d1b7a55",
        hs(claims("logged")),
        hs(claims("logged", ttl=-60)),
        hs(claims("logged"), secret="other-secret-for-logs-0123456789abcd"),
        jwt.encode(claims("logged"), keys.rs, algorithm="RS256"),
        jwt.encode(claims("logged"), keys.rs_other, algorithm="RS256"),
    ]
    refresh_bad = hs(claims("someone-else"))
    refresh_good = hs(claims("logged", ttl=900))
    with caplog.at_level(logging.DEBUG, logger="wsprism"):
        status_of(g, "stat", tickets[1])
        status_of(g, "hs", tickets[3])
        status_of(g, "hs", tickets[4])
        status_of(g, "rs", tickets[6])
        status_of(g, "stat", "tenant=stat")            # odd input, logged or not, is not a ticket

        async def main():
            a, _ = await connect_authed(g.url("stat", STATIC_A))
            b, _ = await connect_authed(g.url("hs", tickets[2]))
            c, _ = await connect_authed(g.url("rs", tickets[5]))
            assert error_of(await refresh(b, refresh_bad)) == "AUTH_FAILED"
            assert (await refresh(b, refresh_good))["type"] == "refreshed"
            assert error_of(await refresh(a, "tk-refresh-bad-77c0aa")) == "AUTH_FAILED"
            # a ticket in a malformed envelope does not leak either
            await b.send('{"v":1,"svc":"sys","type":"refresh","data":{"ticket":"%s"},"bogus":1}' % refresh_good)
            assert await expect_close(b) == 1008
            for ws in (a, c):
                await ws.close()
        run(main())
    records = [r for r in caplog.records if r.name.startswith("wsprism")]
    text = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''} {getattr(r, 'stack_info', '') or ''}" for r in records)
    for secret in tickets + [refresh_bad, refresh_good, "tk-refresh-bad-77c0aa", SECRET, STATIC_B]:
        assert secret not in text
        # nor a recognisable piece of it (a JWT's signature part)
        assert secret.rsplit(".", 1)[-1] not in text
