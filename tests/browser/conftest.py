"""Browser fixtures: headless Chromium driven by PyPI's playwright (pinned in pyproject).

Reusable by any browser test (the demo and client here, an admin page later):

- `browser`: one Chromium for the whole `tests/browser` package, launched from
  Debian's package (`/usr/bin/chromium`, or $WSPRISM_CHROMIUM; `scripts/test.sh`
  installs it with apt-get where missing; `playwright install` is never needed).
  Package scope, not session scope: Playwright's sync API keeps an event loop running
  on the main thread while it is started, and under it `asyncio.run` (which the
  integration tests use) refuses to start; the package's teardown stops it first.
- `pages`: a factory of fresh pages, each in its own context (own cookies and storage),
  all closed after the test. `pages.log(page)` holds the page's console messages and
  uncaught errors. An uncaught page error fails the test unless it is marked
  `@pytest.mark.page_errors_ok`.
- On a failed test, every page's screenshot and console log are saved under
  `test-results/browser/<test name>/` (ARTIFACTS; git-ignored).
- `test_page(pages, base)`: a blank page at `<base>/__test__.html` (fulfilled by the
  test itself, so it shares the origin of whatever serves `base`) that has imported
  `<base>/client/wsprism.js` as `window.W`, with `window.make(options)` building a
  client whose events are recorded in `client.log`.
- `gateway`: a real gateway (module scope) on a fixed free port, with `restart()`.
"""
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.conftest import RunningGateway

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-results" / "browser"
CHROMIUM = os.environ.get("WSPRISM_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
    "--disable-features=LocalNetworkAccessChecks",
]
VIEWPORT = {"width": 1200, "height": 560}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="package")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (scripts/test.sh does it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@dataclass
class PageLog:
    console: list[str] = field(default_factory=list)   # "[type] text", every console message
    errors: list[str] = field(default_factory=list)    # uncaught exceptions and rejections


class Pages:
    def __init__(self, browser) -> None:
        self.browser = browser
        self.contexts = []
        self.logs: dict[Page, PageLog] = {}

    def new(self, url: str | None = None, **context_args) -> Page:
        ctx = self.browser.new_context(**{"viewport": VIEWPORT, **context_args})
        self.contexts.append(ctx)
        page = ctx.new_page()
        log = self.logs[page] = PageLog()
        page.on("console", lambda m: log.console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: log.errors.append(str(e)))
        if url is not None:
            page.goto(url)
        return page

    def log(self, page: Page) -> PageLog:
        return self.logs[page]

    def save_artifacts(self, test_name: str) -> Path:
        out = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        out.mkdir(parents=True, exist_ok=True)
        for i, (page, log) in enumerate(self.logs.items()):
            try:
                page.screenshot(path=str(out / f"page{i}.png"), full_page=True)
            except Exception as exc:       # a closed page: keep its log anyway
                log.console.append(f"[screenshot failed] {exc}")
            lines = [f"url: {page.url}"] + log.console + [f"[pageerror] {e}" for e in log.errors]
            (out / f"page{i}.log").write_text("\n".join(lines) + "\n")
        return out

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()


@pytest.fixture
def pages(browser, request):
    p = Pages(browser)
    yield p
    failed = any(getattr(request.node, f"report_{w}", None) is not None and getattr(request.node, f"report_{w}").failed
                 for w in ("setup", "call"))
    try:
        if failed:
            print(f"browser artifacts: {p.save_artifacts(request.node.name)}")
        errors = [e for log in p.logs.values() for e in log.errors]
        if errors and not failed and request.node.get_closest_marker("page_errors_ok") is None:
            p.save_artifacts(request.node.name)
            pytest.fail(f"uncaught errors in the page: {errors}")
    finally:
        p.close()


TEST_PAGE = """<!doctype html><meta charset="utf-8"><title>wsprism test page</title>
<script type="module">
import * as W from "/client/wsprism.js";
const plain = (x) => x instanceof Error ? {code: x.code, message: x.message, reason: x.reason,
    closeCode: x.closeCode, retryAfter: x.retryAfter, seq: x.seq, room: x.room}
  : x && x.payload instanceof Uint8Array ? {...x, payload: [...x.payload]} : x;
window.W = W;
window.plain = plain;
window.make = (options) => {
  const c = new W.WsPrism(options);
  c.log = [];
  for (const ev of ["state", "error", "message", "presence", "hot", "joined", "authed"]) {
    c.on(ev, (a, b) => c.log.push({ev, t: performance.now(), a: plain(a), b}));
  }
  c.events = (ev) => c.log.filter((e) => e.ev === ev).map((e) => e.b === undefined ? e.a : [e.a, e.b]);
  return c;
};
window.ready = true;
</script>"""


def open_test_page(pages: Pages, base: str, client_js: bytes | None = None, init_script: str | None = None,
                   **context_args) -> Page:
    """A page at `<base>/__test__.html` with the client loaded (see the module docstring).
    `client_js`: serve these bytes as /client/wsprism.js instead of asking `base`;
    `init_script`: JavaScript run in the page before anything else."""
    page = pages.new(**context_args)
    if init_script is not None:
        page.add_init_script(init_script)
    page.route(f"{base}/__test__.html", lambda route: route.fulfill(body=TEST_PAGE, content_type="text/html"))
    if client_js is not None:
        page.route(f"{base}/client/wsprism.js",
                   lambda route: route.fulfill(body=client_js, content_type="text/javascript"))
    page.goto(f"{base}/__test__.html")
    page.wait_for_function("window.ready === true")
    return page


# -- a real gateway for browser tests ----------------------------------------------------
GATEWAY_YAML = """
version: 1
gateway:
  listen: "127.0.0.1:{port}"
  demo: true
  drain_grace_ms: 200
tenants:
  - id: acme
    policy:
      presence_events: true
      ext_allowlist: ["room:*", "chat:send", "sys:*"]
      hot_allowlist: ["1:*"]
  - id: full
    limits: {{max_sessions_total: 1}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """A gateway in this process (tests/conftest.py's RunningGateway) on a fixed port, so
    that it can be restarted under the pages' feet: `restart()` drains it (1001 closes)
    and starts a new one on the same port."""

    def __init__(self, yaml_text: str = GATEWAY_YAML) -> None:
        self.port = free_port()
        self.yaml = yaml_text.format(port=self.port)
        self.running = RunningGateway(self.yaml)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def call(self, fn, *args):
        return self.running.call(fn, *args)

    def tenant(self, tid: str = "acme"):
        return self.running.tenant(tid)

    def stop(self) -> None:
        self.running.stop()

    def start(self) -> None:
        self.running = RunningGateway(self.yaml)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def gateway():
    g = Gateway()
    yield g
    g.stop()
