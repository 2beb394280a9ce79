"""Bun for the `bun` baseline: found in a cache folder, installed there from npm on first use.

The `bun` npm package carries the runtime itself (its platform package
`@oven/bun-<os>-<cpu>` holds the binary), so `npm install` is all it takes; install
scripts are not run (`--ignore-scripts`): the binary is taken from the platform package
directly. The folder is `$WSPRISM_CACHE_DIR/bun` (default `~/.cache/wsprism/bun`, or
under `$XDG_CACHE_HOME`); `$WSPRISM_BUN` names a bun binary to use instead.

Every failure is a `BunUnavailable` with a one-line reason; the bench then runs the
other targets without Bun.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "bun@1.4.5"      # pinned: a baseline must not change under a page of results
INSTALL_TIMEOUT = 300.0
VERSION_TIMEOUT = 15.0


class BunUnavailable(Exception):
    """No usable bun binary; the message is one line."""


def cache_dir() -> Path:
    env = os.environ.get("WSPRISM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wsprism"


def _runs(exe: Path) -> str | None:
    """The version `exe --version` prints, or None when it does not run here."""
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def installed(root: Path) -> Path | None:
    """A bun binary under an npm prefix that runs on this machine (the first of the
    platform packages that does: e.g. `bun-linux-x64` before `bun-linux-x64-baseline`)."""
    oven = root / "node_modules" / "@oven"
    candidates = sorted(oven.glob("bun-*/bin/bun")) if oven.is_dir() else []
    for exe in candidates:
        if os.access(exe, os.X_OK) and _runs(exe):
            return exe
    return None


def version(exe: str) -> str | None:
    return _runs(Path(exe))


def find_or_install() -> str:
    """Path of a bun binary; installs the npm package into the cache folder when needed."""
    env = os.environ.get("WSPRISM_BUN")
    if env:
        if _runs(Path(env)) is None:
            raise BunUnavailable(f"WSPRISM_BUN={env} does not run (`{env} --version` failed)")
        return env
    root = cache_dir() / "bun"
    exe = installed(root)
    if exe is not None:
        return str(exe)
    npm = shutil.which("npm")
    if npm is None:
        raise BunUnavailable(f"npm not found (needed once, to install the {PACKAGE} npm package into {root})")
    root.parent.mkdir(parents=True, exist_ok=True)
    # Install beside the final folder and rename: two benches starting at once never see
    # half an install, and a failed one leaves nothing behind.
    tmp = Path(tempfile.mkdtemp(prefix="bun.install-", dir=root.parent))
    try:
        try:
            proc = subprocess.run(
                [npm, "install", "--prefix", str(tmp), "--no-audit", "--no-fund", "--no-save", "--ignore-scripts",
                 "--loglevel=error", PACKAGE],
                capture_output=True, text=True, timeout=INSTALL_TIMEOUT, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise BunUnavailable(f"npm install {PACKAGE} did not finish within {INSTALL_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise BunUnavailable(f"npm could not be run: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            why = next((ln for ln in lines if "ERR" in ln and "A complete log" not in ln), lines[-1] if lines else "")
            raise BunUnavailable(f"npm install {PACKAGE} failed (exit {proc.returncode})" + (f": {why}" if why else ""))
        if installed(tmp) is None:
            raise BunUnavailable(f"npm installed {PACKAGE}, but it holds no bun binary that runs on this machine")
        if root.exists() and installed(root) is None:
            shutil.rmtree(root, ignore_errors=True)     # a broken earlier install
        try:
            os.rename(tmp, root)
        except OSError:
            if installed(root) is None:     # someone else's install won the race, or the folder is bad
                raise BunUnavailable(f"cannot move the bun install into {root}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    exe = installed(root)
    if exe is None:
        raise BunUnavailable(f"the bun install in {root} holds no bun binary that runs on this machine")
    return str(exe)
