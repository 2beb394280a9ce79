"""The admin page (`/admin/` on the server API's listener) in headless Chromium, on a real
gateway: it renders live numbers, the search finds a user, the button disconnects it (the
client sees 4006), a wrong or another tenant's key gets 401/403 and no data.

The WebSocket clients are browser pages too (a plain `WebSocket` each), so the test needs
no second event loop next to Playwright's.
"""
import json
import os

import pytest
from playwright.sync_api import expect

KEY = "acme-admin-page-0123456789abcdef"
BANK_KEY = "bank-admin-page-fedcba9876543210"
ENV = {"WSPRISM_ADMIN_PAGE_ACME": KEY, "WSPRISM_ADMIN_PAGE_BANK": BANK_KEY}

YAML = """
version: 1
gateway:
  listen: "127.0.0.1:0"
  api:
    listen: "127.0.0.1:0"
    keys: {acme: {env: WSPRISM_ADMIN_PAGE_ACME}, bank: {env: WSPRISM_ADMIN_PAGE_BANK}}
tenants:
  - id: acme
    policy: {ext_allowlist: ["room:*", "chat:send", "sys:*"]}
  - id: bank
"""

CLIENT_JS = """([url, room]) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url);
  window.closeCode = null;
  window.ws = ws;
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "authed") ws.send(JSON.stringify({v: 1, svc: "room", type: "join", room}));
    if (m.type === "joined") resolve(m.room);
  };
  ws.onclose = (e) => { window.closeCode = e.code; reject(new Error(`closed ${e.code}`)); };
})"""


@pytest.fixture(scope="module")
def gw(gateway_factory):
    os.environ.update(ENV)
    try:
        return gateway_factory(YAML)
    finally:
        for k in ENV:
            del os.environ[k]


def admin(gw) -> str:
    return f"http://127.0.0.1:{gw.gw.api.port}/admin/"


def client(pages, gw, user: str, room: str, sid: str | None = None):
    """A browser page holding one WebSocket session of `user`, joined to `room`."""
    page = pages.new(f"{gw.http}/healthz")
    assert page.evaluate(CLIENT_JS, [gw.url(ticket=f"dev:{user}", sid=sid), room]) == room
    return page


def sign_in(page, key: str) -> None:
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")


def test_renders_live_numbers(pages, gw):
    clients = [client(pages, gw, f"ann{i}", "lobby" if i else "vip") for i in range(3)]
    page = pages.new(admin(gw))
    expect(page.locator("#login")).to_be_visible()
    sign_in(page, KEY)
    expect(page.locator("#tenant")).to_have_text("tenant acme")
    expect(page.locator("#n-sessions")).to_have_text("3")
    expect(page.locator("#n-users")).to_have_text("3")
    expect(page.locator("#n-rooms")).to_have_text("2")
    expect(page.locator("#rooms tbody tr").first).to_contain_text("lobby")
    expect(page.locator("#p-scale")).to_have_text("single process, no broker")
    expect(page.locator("#p-state")).to_have_text("serving")
    expect(page.locator("#sessions tbody tr")).to_have_count(3)
    # live: one more client shows up within a refresh or two, without a reload
    clients.append(client(pages, gw, "bob", "lobby"))
    expect(page.locator("#n-sessions")).to_have_text("4", timeout=6000)
    expect(page.locator("#rooms tbody tr").first).to_contain_text("3")          # lobby: 3 users
    expect(page.locator("#rate-ext")).not_to_have_text("–", timeout=6000)     # msgs/s once sampled
    assert page.locator("#status").inner_text().startswith("updated ")


def test_search_finds_a_user_and_the_button_disconnects_it(pages, gw):
    alice = client(pages, gw, "alice", "match:7", sid="tab-a")
    other = client(pages, gw, "alicia", "match:7")
    page = pages.new(admin(gw))
    sign_in(page, KEY)
    page.fill("#q", "alice")
    page.click("#search-form button[type=submit]")
    rows = page.locator("#sessions tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator("td.user")).to_have_text("alice")
    expect(rows.first.locator("td.sid")).to_have_text("tab-a")
    expect(rows.first).to_contain_text("match:7")
    expect(page.locator("#search-count")).to_have_text('1 matching "alice"')
    button = rows.first.locator("button.disconnect")
    button.click()
    expect(button).to_have_text("Confirm: disconnect alice")
    assert alice.evaluate("window.closeCode") is None          # one click does nothing yet
    with page.expect_response(lambda r: r.url.endswith("/v1/disconnect")) as resp:
        button.click()
    assert resp.value.status == 200 and resp.value.json() == {"delivered": 1}
    expect(page.locator("#action")).to_have_text("disconnected alice: 1 session(s) closed with 4006")
    alice.wait_for_function("window.closeCode !== null")
    assert alice.evaluate("window.closeCode") == 4006
    expect(page.locator("#sessions tbody tr td.empty")).to_have_text("no session matches", timeout=6000)
    assert other.evaluate("window.closeCode") is None          # alicia is still there
    page.fill("#q", "ali")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#sessions tbody tr td.user")).to_have_text(["alicia"])


def test_wrong_key_gets_401_and_no_data(pages, gw):
    client(pages, gw, "secret-user", "hidden-room")
    page = pages.new(admin(gw))
    with page.expect_response(lambda r: "/v1/admin/state" in r.url) as resp:
        sign_in(page, "not-a-key")
    assert resp.value.status == 401
    body = resp.value.text()
    assert json.loads(body) == {"error": "invalid key"} and "secret-user" not in body
    expect(page.locator("#login-error")).to_have_text("401: invalid key")
    expect(page.locator("#dash")).to_be_hidden()
    expect(page.locator("#n-sessions")).to_have_text("–")
    assert "secret-user" not in page.content() and "hidden-room" not in page.content()
    assert page.evaluate("sessionStorage.length") == 0             # the bad key is not kept


def test_another_tenants_key_sees_its_tenant_only(pages, gw):
    client(pages, gw, "acme-only", "acme-room")
    page = pages.new(admin(gw))
    sign_in(page, BANK_KEY)
    expect(page.locator("#tenant")).to_have_text("tenant bank")
    expect(page.locator("#n-sessions")).to_have_text("0")
    assert "acme-only" not in page.content() and "acme-room" not in page.content()
    # asking for acme's state with bank's key from the page: 403, no data
    status, body = page.evaluate("""key => fetch("../v1/admin/state?tenant=acme",
        {headers: {Authorization: `Bearer ${key}`}}).then(async r => [r.status, await r.text()])""", BANK_KEY)
    assert status == 403 and "acme-only" not in body
    assert json.loads(body) == {"error": "this key is not valid for that tenant", "field": "tenant"}


def test_key_stays_in_its_tab_and_sign_out_forgets_it(pages, gw):
    page = pages.new(admin(gw))
    sign_in(page, KEY)
    expect(page.locator("#tenant")).to_have_text("tenant acme")
    page.reload()                                       # same tab: still signed in
    expect(page.locator("#tenant")).to_have_text("tenant acme")
    fresh = pages.new(admin(gw))                        # another context: not signed in
    expect(fresh.locator("#login")).to_be_visible()
    expect(fresh.locator("#dash")).to_be_hidden()
    page.click("#signout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.locator("#n-sessions")).to_have_text("–")
