"""The JavaScript client's budget and types, checked with pinned npm tools
(scripts/js_check.sh: terser + gzip for the size, tsc --strict for wsprism.d.ts)."""
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUDGET = 6 * 1024          # min+gzip, SPEC 16 / issue 13: smaller than every client in the notes


def js_check(what: str) -> str:
    r = subprocess.run(["bash", "scripts/js_check.sh", what], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_client_min_gzip_is_within_budget():
    out = js_check("size")
    size = int(re.search(r"min\+gzip (\d+) B", out).group(1))
    print(out)
    assert size <= BUDGET, out


def test_type_declarations_compile_strict():
    assert "ok" in js_check("types")


def test_served_copies_are_links_to_clients_js():
    """wsprism/ops/static/ (what the wheel ships and the gateway serves) links to
    clients/js/ (what developers read and edit): one file, never two that drift."""
    for name in ("wsprism.js", "wsprism.d.ts"):
        link = REPO / "wsprism" / "ops" / "static" / name
        assert link.is_symlink() and link.resolve() == (REPO / "clients" / "js" / name).resolve()
