#!/usr/bin/env bash
# Builds the wheel (`pip wheel .`), installs it into a fresh venv that has no Cython,
# and checks that the compiled fast path is active, the gateway serves /healthz, the
# demo page and the JavaScript client are in the wheel and served (/demo/, /client/*), and
# `wsprism bench --spawn wsprism.yaml --baseline` runs from the installed package alone
# (baseline servers shipped inside it, tenant and dev ticket taken from the config).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
python -m pip wheel -q --no-deps . -w "$work/dist"
wheel=$(ls "$work"/dist/wsprism-*.whl)
python -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); sys.exit(not all(any(n.startswith(f'wsprism/_fast/{m}.') and n.endswith('.so') for n in names) for m in ('codes_c', 'bucket_c', 'utf8_c', 'hotheader_c', 'fanout_c', 'framer_c', 'reader_c')))" "$wheel" \
  || { echo "check_wheel: compiled modules missing from $wheel"; exit 1; }
# the demo page and the JavaScript client travel in the wheel, as the files in the tree
python - "$wheel" <<'PY' || { echo "check_wheel: demo or JS client missing from $wheel"; exit 1; }
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for name, src in [("demo.html", "wsprism/ops/static/demo.html"), ("wsprism.js", "clients/js/wsprism.js"),
                  ("wsprism.d.ts", "clients/js/wsprism.d.ts")]:
    if z.read(f"wsprism/ops/static/{name}") != open(src, "rb").read():
        sys.exit(f"wsprism/ops/static/{name} differs from {src}")
PY
python -c "import sys, zipfile; names = set(zipfile.ZipFile(sys.argv[1]).namelist()); sys.exit(not all(f'wsprism/ops/static/admin/{f}' in names for f in ('index.html', 'admin.js', 'admin.css')))" "$wheel" \
  || { echo "check_wheel: the admin page's files are missing from $wheel"; exit 1; }
"${PYTHON:-python3}" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel[bench]"
if "$work/venv/bin/python" -c "import Cython" 2>/dev/null; then
  echo "check_wheel: Cython leaked into the runtime venv"; exit 1
fi
"$work/venv/bin/wsprism" version | tee "$work/version.txt"
grep -q "compiled fast path: active" "$work/version.txt"
# the broker's Lua scripts ship as package data
"$work/venv/bin/python" -c "from wsprism.broker.scripts import NAMES, SCRIPTS; assert len(SCRIPTS) == len(NAMES)" \
  || { echo "check_wheel: broker Lua scripts missing from $wheel"; exit 1; }
port=$("$work/venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
sed "s/0.0.0.0:8080/127.0.0.1:$port/" wsprism.yaml > "$work/wsprism.yaml"
(cd "$work" && exec "$work/venv/bin/wsprism" start --config wsprism.yaml > "$work/gw.log" 2>&1) &
pid=$!
for _ in $(seq 50); do
  if python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "http://127.0.0.1:$port/healthz" 2>/dev/null; then
    # the bundled wsprism.yaml turns gateway.demo on: the page and the client are served
    python - "http://127.0.0.1:$port" <<'PY' || { echo "check_wheel: the installed gateway does not serve the demo"; cat "$work/gw.log"; exit 1; }
import sys, urllib.request
base = sys.argv[1]
for path, src in [("/demo/", "wsprism/ops/static/demo.html"), ("/client/wsprism.js", "clients/js/wsprism.js"),
                  ("/client/wsprism.d.ts", "clients/js/wsprism.d.ts")]:
    if urllib.request.urlopen(base + path, timeout=2).read() != open(src, "rb").read():
        sys.exit(f"{path} differs from {src}")
PY
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    # a short, bounded bench run from outside the source tree, as an operator would
    if ! (cd "$work" && timeout 120 "$work/venv/bin/wsprism" bench chat --spawn wsprism.yaml --baseline \
          --conns 4 --repeat 1 --duration 0.3 --warmup 0.1 --drain 1 --connect-timeout 5 > "$work/bench.txt" 2>&1); then
      echo "check_wheel: wsprism bench from the wheel failed"; cat "$work/bench.txt"; exit 1
    fi
    for t in wsprism picows websockets; do
      grep -Eq "^$t +1 +[0-9]" "$work/bench.txt" || { echo "check_wheel: no $t row in the bench output"; cat "$work/bench.txt"; exit 1; }
    done
    echo "check_wheel: ok ($(basename "$wheel") installs without Cython, compiled path active, /healthz 200, demo and client served, bench runs)"
    exit 0
  fi
  sleep 0.1
done
echo "check_wheel: gateway from the wheel did not answer /healthz"; cat "$work/gw.log"; exit 1
