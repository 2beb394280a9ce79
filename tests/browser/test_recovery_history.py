"""Recovery through a real gateway with `policy.history` (SPEC 13), the client doing
what SPEC 16 asks of it: offsets and epochs per room, re-join with `since`, replayed
duplicates dropped, `recovered` surfaced (the same client against the fake gateway:
test_client_fake_gateway.py).
"""
from tests.browser.conftest import GATEWAY_YAML, Gateway, open_test_page

HISTORY_YAML = GATEWAY_YAML.replace("      presence_events: true\n",
                                    "      presence_events: true\n      history: {{size: 100, ttl_ms: 60000}}\n")


def msgs(page):
    return page.evaluate("c.events('message').map((m) => [m.data.msg, m.offset, m.epoch])")


def test_a_reconnecting_tab_recovers_what_it_missed_once_each(pages):
    g = Gateway(HISTORY_YAML)
    try:
        alice = open_test_page(pages, g.http)
        bob = open_test_page(pages, g.http)
        # alice retries only when told to (the `online` event), so bob can talk while she is away
        alice.evaluate(f"window.c = make({{url: '{g.ws}', tenant: 'acme', ticket: 'dev:alice', minDelay: 60000, maxDelay: 60000}})")
        bob.evaluate(f"window.c = make({{url: '{g.ws}', tenant: 'acme', ticket: 'dev:bob'}})")
        first = alice.evaluate("c.connect().then(() => c.join('hist'))")
        assert first["offset"] == 0 and isinstance(first["epoch"], str) and "recovered" not in first
        epoch = first["epoch"]
        bob.evaluate("c.connect().then(() => c.join('hist')).then(() => c.send('hist', 'm1')).then(() => c.send('hist', 'm2'))")
        alice.wait_for_function("c.events('message').length === 2")
        assert msgs(alice) == [["m1", 1, epoch], ["m2", 2, epoch]]
        assert alice.evaluate("c.position('hist')") == {"offset": 2, "epoch": epoch}
        # alice's link drops (idle timeout, say): she is away while bob says two more things
        sid = alice.evaluate("c.sid")
        g.call(lambda: g.tenant().sessions.find("alice", sid).close(4002, "idle"))
        alice.wait_for_function("c.state === 'reconnecting'")
        bob.evaluate("c.send('hist', 'm3').then(() => c.send('hist', 'm4'))")
        alice.evaluate("window.dispatchEvent(new Event('online'))")
        alice.wait_for_function("c.events('joined').length === 2")
        rejoin = alice.evaluate("c.events('joined')[1]")
        assert rejoin == {"room": "hist", "rejoin": True, "recovered": True, "offset": 4, "epoch": epoch}
        assert msgs(alice) == [["m1", 1, epoch], ["m2", 2, epoch], ["m3", 3, epoch], ["m4", 4, epoch]]
        # a restart loses the in-memory history: a new epoch, recovered false, refetch state
        g.restart()
        alice.wait_for_function("c.state === 'reconnecting'")     # the drain's 1001 reached the page
        alice.evaluate("window.dispatchEvent(new Event('online'))")
        alice.wait_for_function("c.events('joined').length === 3", timeout=10000)
        again = alice.evaluate("c.events('joined')[2]")
        assert again["rejoin"] is True and again["recovered"] is False and again["epoch"] != epoch
    finally:
        g.stop()
