"""The demo page (/demo/, built on the client) in headless Chromium against a real
gateway: two tabs chat, see each other in the room and each other's mouse moves (Hot
Lane); a gateway restart; refusals shown with their reason and not retried.

The README's screenshot (docs/images/demo.png) is taken here: every run saves it under
test-results/browser/, and WSPRISM_UPDATE_SCREENSHOT=1 also writes it to docs/images/.
"""
import os
import shutil

from tests.browser.conftest import ARTIFACTS, REPO

SCREENSHOT = REPO / "docs" / "images" / "demo.png"


def open_demo(pages, gateway, query):
    page = pages.new(f"{gateway.http}/demo/?{query}")
    page.wait_for_function("window.client && window.client.state === 'open'")
    # "<user> at x,y" as the page shows it under the canvas
    page.evaluate("""window.cursorOf = (user) => document.getElementById('cursors').textContent
        .split(' · ').find((s) => s.startsWith(user + ' at '))""")
    return page


def people(page):
    return page.locator("#people li").all_inner_texts()


def chat_lines(page):
    return [t for t in page.locator("#log li:not(.sys)").all_inner_texts()]


def move(page, points):
    box = page.locator("#pad").bounding_box()
    for x, y in points:
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.wait_for_timeout(25)


def wait_people(page, n):
    page.wait_for_function(f"document.querySelectorAll('#people li').length === {n}")


def test_two_tabs_chat_presence_and_hot_lane(pages, gateway):
    alice = open_demo(pages, gateway, "user=alice")
    bob = open_demo(pages, gateway, "user=bob")
    for page in (alice, bob):
        wait_people(page, 2)
    assert people(alice) == ["alice (you)", "bob"] and people(bob) == ["alice", "bob (you)"]
    alice.fill("#msg", "hello bob")
    alice.press("#msg", "Enter")
    bob.wait_for_function("document.querySelectorAll('#log li:not(.sys)').length === 1")
    bob.fill("#msg", "hi alice")
    bob.press("#msg", "Enter")
    alice.wait_for_function("document.querySelectorAll('#log li:not(.sys)').length === 2")
    for page in (alice, bob):
        page.wait_for_function("document.querySelectorAll('#log li:not(.sys)').length === 2")
        assert chat_lines(page) == ["alice: hello bob", "bob: hi alice"]
    assert alice.input_value("#msg") == ""          # cleared once the gateway acked it
    # mouse moves over the canvas: Hot Lane frames that every tab in the room draws (the
    # relay sends them back to the sender too, so each tab can compare with its own echo)
    move(bob, [(60 + 18 * i, 70 + 8 * i) for i in range(15)])
    move(alice, [(330 - 12 * i, 220 - 6 * i) for i in range(15)])
    for who, other in (("bob", alice), ("alice", bob)):
        mine = bob if who == "bob" else alice
        mine.wait_for_function(f"cursorOf('{who}') !== undefined")
        other.wait_for_function(f"(p) => cursorOf('{who}') === p", arg=mine.evaluate(f"cursorOf('{who}')"))
    assert alice.inner_text("#state") == "open" and alice.inner_text("#error") == "last error: none"
    alice.wait_for_timeout(100)                     # the last animation frames drawn
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = alice.evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)")
    alice.screenshot(path=str(ARTIFACTS / "demo.png"), clip={"x": 0, "y": 0, "width": 1200, "height": height})
    if os.environ.get("WSPRISM_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / "demo.png", SCREENSHOT)
    # leaving: bob's tab closes, alice sees him go
    bob.context.close()
    wait_people(alice, 1)
    assert people(alice) == ["alice (you)"]


def test_gateway_restart_tabs_reconnect_and_rejoin(pages, gateway):
    alice = open_demo(pages, gateway, "user=alice&room=restart")
    bob = open_demo(pages, gateway, "user=bob&room=restart")
    for page in (alice, bob):
        wait_people(page, 2)
    gateway.restart()
    for page in (alice, bob):
        page.wait_for_function("document.getElementById('log').textContent.includes('reconnected')", timeout=10000)
        wait_people(page, 2)
        assert page.inner_text("#state") == "open"
    assert gateway.call(lambda: sorted(gateway.tenant().rooms.presence("restart")[1])) == ["alice", "bob"]
    alice.fill("#msg", "still there?")
    alice.press("#msg", "Enter")
    bob.wait_for_function("document.getElementById('log').textContent.includes('alice: still there?')")


def refusals(gateway, status: str) -> int:
    gw = gateway.running.gw
    return gateway.call(lambda: sum(s.upgrades.get(status, 0) for s in [gw.unknown_stats] + [t.stats for t in gw.tenants.values()]))


def test_refusal_reasons_are_shown_and_not_retried(pages, gateway):
    cases = [("ticket=nope", "auth_failed", "401"), ("tenant=nope", "unknown_tenant", "400")]
    before = {status: refusals(gateway, status) for _, _, status in cases}
    tabs = [pages.new(f"{gateway.http}/demo/?{query}") for query, _, _ in cases]
    for page in tabs:
        page.wait_for_function("document.getElementById('state').textContent === 'closed'")
    tabs[0].wait_for_timeout(1100)     # longer than the first backoff (0.5 to 1 s): nothing more happens
    for page, (_, reason, status) in zip(tabs, cases):
        assert page.inner_text("#state") == "closed"
        assert f"REFUSED ({reason})" in page.inner_text("#error")
        assert refusals(gateway, status) - before[status] == 2      # the refused upgrade and its check, once each
