"""clients/js/wsprism.js under Node (SPEC 16: browsers and Node >= 20) against a real
gateway: connect, join, chat with its ack, presence, a refused request, a Hot Lane frame
with its ack, close. The browser suite (tests/browser) covers the rest."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def node_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: scripts/test.sh installs it (apt-get install nodejs)")
    has_ws = subprocess.run([node, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"]).returncode == 0
    return [node] if has_ws else [node, "--experimental-websocket"]     # Node 20


def test_node_client_against_the_gateway(gw):
    r = subprocess.run(node_command() + ["clients/js/test/node_smoke.mjs", f"ws://127.0.0.1:{gw.port}/v1/ws", "acme"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["authed"]["user"] == "node" and out["authed"]["tenant"] == "acme"
    assert out["joined"] == {"room": "node-room", "rejoin": False}
    assert out["sent"] == "acked" and out["messages"] == [{"from": "node", "msg": "from node"}]
    assert out["presence"] == {"count": 1, "users": ["node"]}
    assert out["notAllowed"] == "NOT_ALLOWED"
    assert out["hot"] == [[1, 9, 1, 1, [4, 2]]]            # the relay's copy, ACK_REQUESTED cleared
    assert out["states"] == ["connecting", "open", "closed"] and out["errors"] == []
