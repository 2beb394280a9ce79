"""Browser fixtures (minimal stand-in): headless Chromium driven by PyPI's playwright.

The same names and behaviour as the JS client's browser fixtures (issue 13), for the
admin page's tests until those land; drop this file in favour of theirs when merging.

- `browser`: one Chromium for the package, Debian's `/usr/bin/chromium` (or
  $WSPRISM_CHROMIUM); never `playwright install`. Package scope: Playwright's sync API
  keeps an event loop on the main thread while it runs.
- `pages`: a factory of fresh pages (`pages.new(url)`), each in its own context, closed
  after the test; an uncaught page error fails the test; on failure every page's
  screenshot and console log go to `test-results/browser/<test>/`.
"""
import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-results" / "browser"
CHROMIUM = os.environ.get("WSPRISM_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1200, "height": 800}


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


class Pages:
    def __init__(self, browser) -> None:
        self.browser = browser
        self.contexts = []
        self.logs = {}

    def new(self, url: str | None = None, **context_args):
        ctx = self.browser.new_context(**{"viewport": VIEWPORT, **context_args})
        self.contexts.append(ctx)
        page = ctx.new_page()
        log = self.logs[page] = {"console": [], "errors": []}
        page.on("console", lambda m: log["console"].append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: log["errors"].append(str(e)))
        if url is not None:
            page.goto(url)
        return page

    def save_artifacts(self, test_name: str) -> Path:
        out = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        out.mkdir(parents=True, exist_ok=True)
        for i, (page, log) in enumerate(self.logs.items()):
            try:
                page.screenshot(path=str(out / f"page{i}.png"), full_page=True)
            except Exception as exc:
                log["console"].append(f"[screenshot failed] {exc}")
            lines = [f"url: {page.url}", *log["console"], *(f"[pageerror] {e}" for e in log["errors"])]
            (out / f"page{i}.log").write_text("\n".join(lines) + "\n")
        return out


@pytest.fixture
def pages(browser, request):
    p = Pages(browser)
    yield p
    failed = any(getattr(request.node, f"report_{w}", None) is not None and getattr(request.node, f"report_{w}").failed
                 for w in ("setup", "call"))
    try:
        if failed:
            print(f"browser artifacts: {p.save_artifacts(request.node.name)}")
        errors = [e for log in p.logs.values() for e in log["errors"]]
        if errors and not failed:
            p.save_artifacts(request.node.name)
            pytest.fail(f"uncaught errors in the page: {errors}")
    finally:
        for ctx in p.contexts:
            ctx.close()
