"""The router's upgrade-header checks (wsprism/transport/handshake.py) accept exactly what
picows' own `_validate_upgrade_request` accepts, minus what SPEC 14 refuses on top
(a version other than 13, a duplicated Host or key). picows validates again after the
listener factory, so a request the router passes and picows refuses would create a
session picows then drops; the router no longer calls picows' check (it computes the
accept value, a SHA-1, that picows computes again for the 101)."""
import base64
import string

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from picows.picows import _validate_upgrade_request
from picows import WSUpgradeRequest

from wsprism.transport.handshake import _KEY, _picows_accepts, ws_header_problem

GOOD_KEY = base64.b64encode(bytes(16)).decode()

_values = {
    "Upgrade": st.sampled_from(["websocket", "WebSocket", "websockets", "h2c", "", "websocket, h2c"]),
    "Connection": st.sampled_from(["upgrade", "Upgrade", "keep-alive", "", "upgrade, keep-alive"]),
    "Sec-WebSocket-Version": st.sampled_from(["13", "8", "12", ""]),
    "Sec-WebSocket-Key": st.sampled_from([GOOD_KEY, "short", base64.b64encode(bytes(15)).decode(), ""]),
    "Host": st.sampled_from(["example.com", ""]),
}


@st.composite
def headers(draw):
    h = CIMultiDict()
    for name, values in _values.items():
        if draw(st.booleans()) or name == "Host":
            h.add(name, draw(values))
    return h


def router_accepts(h) -> bool:
    return _picows_accepts(h.get("Upgrade", "").lower(), h.get("Connection", "").lower())


def picows_accepts(h) -> bool:
    req = WSUpgradeRequest()
    req.method, req.path, req.version, req.headers = b"GET", b"/v1/ws", b"HTTP/1.1", h
    try:
        _validate_upgrade_request(req)
    except RuntimeError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(headers())
def test_what_the_router_passes_picows_accepts(h):
    ours = ws_header_problem(h) is None and router_accepts(h)
    if ours:
        assert picows_accepts(h)
    elif ws_header_problem(h) is None:        # passed SPEC 14's checks: refused only where picows refuses
        assert not picows_accepts(h)


def test_the_usual_upgrade_passes():
    h = CIMultiDict({"Host": "x", "Upgrade": "websocket", "Connection": "Upgrade",
                     "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": GOOD_KEY})
    assert ws_header_problem(h) is None and router_accepts(h) and picows_accepts(h)


def b64_key_of_16_bytes(key: str) -> bool:
    """The key rule as first written (RFC 6455 4.2.1: the base64 of 16 bytes)."""
    import binascii
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return False


_B64 = string.ascii_letters + string.digits + "+/="


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.binary(min_size=0, max_size=20).map(lambda b: base64.b64encode(b).decode()),
    st.binary(min_size=16, max_size=16).map(lambda b: base64.b64encode(b).decode()[:-3]),
    st.text(alphabet=_B64, min_size=20, max_size=26),
    st.text(alphabet=_B64 + " \t\r\n-_.é", max_size=30),
    st.text(max_size=30),
))
def test_the_key_pattern_is_the_base64_of_16_bytes(key):
    assert bool(_KEY.fullmatch(key)) == b64_key_of_16_bytes(key)
