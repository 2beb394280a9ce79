"""The client as the gateway serves it (/client/wsprism.js), in Chromium, against a real
gateway: requests and their errors, a replaced tab (4003) that stops, the per-tab sid
(a duplicated tab takes its own), and refusals that heal (tenant full, draining, rate
limited) retried until they do."""
import pytest

from tests.browser.conftest import GATEWAY_YAML, Gateway, open_test_page


def client(page, gateway, name="c", tenant="acme", ticket="dev:alice", extra=""):
    page.evaluate(f"window.{name} = make({{url: '{gateway.ws}', tenant: '{tenant}', ticket: '{ticket}', "
                  f"minDelay: 100, maxDelay: 400, {extra}}})")


def test_requests_resolve_and_a_forbidden_service_rejects_not_allowed(pages, gateway):
    page = open_test_page(pages, gateway.http)
    client(page, gateway)
    authed = page.evaluate("c.connect()")
    assert authed["tenant"] == "acme" and authed["user"] == "alice" and authed["sid"] == page.evaluate("c.sid")
    assert page.evaluate("c.join('req')") == {"room": "req", "rejoin": False}
    assert page.evaluate("c.presence('req')") == {"count": 1, "users": ["alice"]}
    assert page.evaluate("c.send('req', 'hello')") is None
    assert page.evaluate("c.events('message')")[0]["data"] == {"from": "alice", "msg": "hello"}
    err = page.evaluate("c.request('match', 'move', {x: 1}, {room: 'req'}).catch((e) => plain(e))")
    assert err["code"] == "NOT_ALLOWED" and isinstance(err["seq"], int)
    err = page.evaluate("c.send('elsewhere', 'hi').catch((e) => plain(e))")     # not a member
    assert err["code"] == "NOT_ALLOWED"
    err = page.evaluate("c.join('bad room!').catch((e) => plain(e))")
    assert err["code"] == "BAD_REQUEST"
    # the session is still there and still in its room
    assert page.evaluate("c.state") == "open"
    assert page.evaluate("c.sendHot(1, 2, new Uint8Array([7]), {ack: true}).then(() => 'acked')") == "acked"
    page.wait_for_function("c.events('hot').length === 1")      # the relay's copy to the room (us)
    assert page.evaluate("c.events('hot')[0]") == {"svc": 1, "op": 2, "flags": 1, "seq": 1, "payload": [7]}
    assert page.evaluate("c.leave('req')") is None
    assert page.evaluate("[...c.rooms.keys()]") == []
    page.evaluate("c.close()")
    assert page.evaluate("c.state") == "closed"


def test_replaced_tab_stops_instead_of_fighting_back(pages, gateway):
    a = open_test_page(pages, gateway.http)
    b = open_test_page(pages, gateway.http)
    client(a, gateway, extra="sid: 'same-tab'")
    client(b, gateway, extra="sid: 'same-tab'")
    a.evaluate("c.connect()")
    b.evaluate("c.connect()")
    a.wait_for_function("c.state === 'closed'")
    b.wait_for_timeout(500)       # two backoff periods: a tab that fought back would have kicked b
    assert b.evaluate("c.state") == "open" and b.evaluate("c.events('state').length") == 2   # connecting, open
    err = a.evaluate("plain(c.lastError)")
    assert err["code"] == "CLOSED" and err["closeCode"] == 4003 and err["reason"] == "replaced"
    assert a.evaluate("c.events('state').at(-1)") == ["closed", {"closeCode": 4003, "reason": "replaced"}]
    assert gateway.call(lambda: len(list(gateway.tenant().sessions.all_sessions()))) == 1
    b.evaluate("c.close()")


def test_each_tab_keeps_its_sid_and_a_duplicated_tab_takes_a_new_one(pages, gateway):
    a = open_test_page(pages, gateway.http)
    client(a, gateway)
    a.evaluate("c.connect()")
    sid = a.evaluate("c.sid")
    storage = a.evaluate("JSON.stringify(Object.entries(sessionStorage))")
    # a duplicated tab: Chrome copies sessionStorage, the original's "live" mark included
    dup = open_test_page(pages, gateway.http,
                         init_script="for (const [k, v] of JSON.parse(%r)) sessionStorage.setItem(k, v)" % storage)
    client(dup, gateway)
    dup.evaluate("c.connect()")
    assert dup.evaluate("c.sid") != sid
    a.wait_for_timeout(300)
    assert a.evaluate("c.state") == "open" and dup.evaluate("c.state") == "open"
    # a reload of the same tab keeps its sid: the new session replaces the old one
    a.reload()
    a.wait_for_function("window.ready === true")
    client(a, gateway)
    a.evaluate("c.connect()")
    assert a.evaluate("c.sid") == sid
    a.evaluate("c.close()")
    dup.evaluate("c.close()")


def test_tenant_full_is_retried_until_a_slot_frees(pages, gateway):
    a = open_test_page(pages, gateway.http)
    b = open_test_page(pages, gateway.http)
    client(a, gateway, tenant="full")
    client(b, gateway, tenant="full", ticket="dev:bob")
    a.evaluate("c.connect()")
    err = b.evaluate("c.connect().catch((e) => plain(e))")
    assert err["code"] == "REFUSED" and err["reason"] == "tenant_full" and err["retryAfter"] == 1
    state = b.evaluate("c.events('state').at(-1)")
    assert state[0] == "reconnecting" and state[1]["reason"] == "tenant_full" and state[1]["delay"] >= 1000
    a.evaluate("c.close()")
    b.wait_for_function("c.state === 'open'", timeout=5000)
    b.evaluate("c.close()")


def test_draining_is_retried_until_the_gateway_accepts(pages, gateway):
    page = open_test_page(pages, gateway.http)
    client(page, gateway)
    gw = gateway.running.gw
    gateway.call(lambda: setattr(gw, "draining", True))
    try:
        err = page.evaluate("c.connect().catch((e) => plain(e))")
        assert err["code"] == "REFUSED" and err["reason"] == "draining"
        assert page.evaluate("c.state") == "reconnecting"
    finally:
        gateway.call(lambda: setattr(gw, "draining", False))
    page.wait_for_function("c.state === 'open'", timeout=5000)
    page.evaluate("c.close()")


DEFENDED = GATEWAY_YAML.replace("  drain_grace_ms: 200\n", "  drain_grace_ms: 200\n  handshake_limit: "
                                "{{enabled: true, global_rps: 1000, global_burst: 1000, per_ip_rps: 0.5, per_ip_burst: 1}}\n")


@pytest.fixture(scope="module")
def defended():
    g = Gateway(DEFENDED)
    yield g
    g.stop()


def test_rate_limited_waits_for_retry_after(pages, defended):
    page = open_test_page(pages, defended.http)          # (plain HTTP: the defender only counts upgrades)
    client(page, defended, name="a")
    client(page, defended, name="b", ticket="dev:bob")
    page.evaluate("a.connect()")                          # the one token there was
    err = page.evaluate("b.connect().catch((e) => plain(e))")
    assert err["code"] == "REFUSED" and err["reason"] == "rate_limited" and err["retryAfter"] >= 1
    state = page.evaluate("b.events('state').at(-1)")
    assert state[0] == "reconnecting" and state[1]["delay"] >= 1000 * err["retryAfter"]
    page.evaluate("a.close(); b.close()")
