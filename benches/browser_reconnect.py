"""How long two browser tabs take to come back after a gateway restart (issue 13).

    python benches/browser_reconnect.py [--restarts 20] [--out FILE.json]

Starts `wsprism start` on the bundled wsprism.yaml (tenant acme, demo on, default
drain_grace_ms 2000) on a free port, opens the demo page (/demo/) in two headless
Chromium tabs (alice and bob, each a default client: backoff 0.5-20 s), then restarts the
gateway N times: SIGTERM (drain: 1001 closes), wait for the exit, start it again. For each
restart and tab it records, on the machine's one clock (Date.now() in the page,
time.time() here):

- `after_ready`: from the new process answering /healthz to the tab re-joined (its
  `joined` event with rejoin: true): the client's own share;
- `outage`: from the tab seeing its close to re-joined: what a user sees, including
  the drain spread and the new process's start-up.

Prints p50/p99/max of both over all restarts, where a restart's value is the slower of
the two tabs. The goal (issue 13): after_ready p99 <= 3 s.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.browser.conftest import CHROMIUM, LAUNCH_ARGS  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cfg: Path, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wsprism", "start", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def wait_healthy(port: int, timeout: float = 15.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5).read()
            return time.time()
        except OSError:
            time.sleep(0.005)
    raise RuntimeError("gateway did not come up")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args()
    port = free_port()
    work = REPO / "test-results" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "reconnect.yaml"
    cfg.write_text((REPO / "wsprism.yaml").read_text().replace("0.0.0.0:8080", f"127.0.0.1:{port}"))
    log = open(work / "reconnect.log", "w")
    proc = start(cfg, log)
    wait_healthy(port)
    after_ready, outage = [], []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            tabs = []
            for user in ("alice", "bob"):
                page = browser.new_context().new_page()
                page.goto(f"http://127.0.0.1:{port}/demo/?user={user}")
                page.wait_for_function("window.client && client.state === 'open'")
                page.evaluate("""() => { window.marks = [];
                    client.on('state', (s) => s === 'reconnecting' && marks.push(['down', Date.now()]));
                    client.on('joined', (j) => j.rejoin && marks.push(['back', Date.now()])); }""")
                tabs.append(page)
            for i in range(args.restarts):
                for page in tabs:
                    page.evaluate("marks.length = 0")
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
                proc = start(cfg, log)
                ready = wait_healthy(port)
                waits, gaps = [], []
                for page in tabs:
                    page.wait_for_function("marks.some((m) => m[0] === 'back')", timeout=30000)
                    marks = page.evaluate("marks")
                    down = next(t for k, t in marks if k == "down") / 1000
                    back = next(t for k, t in marks if k == "back") / 1000
                    waits.append(back - ready)
                    gaps.append(back - down)
                after_ready.append(max(waits))
                outage.append(max(gaps))
                print(f"restart {i + 1:2d}: after_ready {after_ready[-1]:.3f} s, outage {outage[-1]:.3f} s", flush=True)
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    summary = {
        name: {"p50": round(statistics.median(v), 3), "p99": round(pct(v, 99), 3), "max": round(max(v), 3), "n": len(v)}
        for name, v in (("after_ready_s", after_ready), ("outage_s", outage))
    }
    summary["command"] = "python benches/browser_reconnect.py --restarts %d" % args.restarts
    summary["cpus"] = os.cpu_count()
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
