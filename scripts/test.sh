#!/usr/bin/env bash
# Installs everything the tests need, then runs them. README's test command; .ci/run calls it.
#   bash scripts/test.sh            default suite (< 6 min on 2 cores; the browser part < 1 min)
#   bash scripts/test.sh -m slow    the soak/load tests instead
# Outside an active virtualenv it creates and uses ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests start for real, installed with apt-get where missing:
#   redis-server  the scale-out tests
#   chromium      the browser tests (tests/browser: PyPI playwright drives /usr/bin/chromium;
#                 no `playwright install`, which would download a browser)
#   nodejs, npm   the JavaScript client under Node, and its size and type checks
#   prometheus    prometheus and promtool: the dashboard and alert-rule tests
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test]"
python -m wsprism version

if [ $# -eq 0 ]; then
  # the wheel carries the compiled modules and runs without Cython
  bash scripts/check_wheel.sh
  # the lanes once more on the pure-Python twins (WSPRISM_NO_EXTENSIONS)
  WSPRISM_NO_EXTENSIONS=1 python -m pytest -q -p no:randomly \
    tests/integration/test_ext_lane.py tests/integration/test_hot_lane.py \
    tests/integration/test_hostile.py tests/integration/test_chat_presence.py \
    tests/integration/test_rooms.py tests/integration/test_sessions.py \
    tests/integration/test_python_services.py tests/integration/test_history.py \
    tests/integration/test_rfc6455.py tests/integration/test_memory_bounds.py tests/integration/test_fuzz.py
fi
# the whole suite on the compiled path
python -m pytest "$@"
