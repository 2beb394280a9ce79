"""The layering rules, read off the source (STYLE 2.1; issue 10's mending).

- nothing under wsprism/core/ imports from policy, ops or services;
- nothing fills module globals for the hot path to call back (no `install`), and
  nothing reads an attribute back off the gateway with getattr;
- only wsprism/_fast/__init__.py (and tests and benches) import a `_c` or `_py` module.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "wsprism"


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.extend(f"{base}.{a.name}" if not node.module else base for a in node.names)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


@pytest.mark.parametrize("path", sorted((PKG / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_does_not_import_upward(path):
    for name in imports(path):
        parts = name.lstrip(".").split(".")
        assert not ({"policy", "ops", "services"} & set(parts[:1])) and not name.startswith(
            ("wsprism.policy", "wsprism.ops", "wsprism.services")), f"{path.name} imports {name}"


def test_no_install_hook_and_no_getattr_on_the_gateway():
    for path in PKG.rglob("*.py*"):
        if path.suffix not in (".py", ".pyx"):
            continue
        text = path.read_text()
        assert "def install(" not in text, path
        assert "getattr(gateway" not in text and "getattr(self.gateway" not in text, path


def test_only_the_selector_names_twins():
    for path in PKG.rglob("*.py"):
        if path.parent.name == "_fast":
            continue
        for name in imports(path):
            last = name.rsplit(".", 1)[-1]
            assert not (last.endswith(("_c", "_py")) and "_fast" in name), f"{path} imports {name}"
