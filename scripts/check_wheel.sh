#!/usr/bin/env bash
# Builds the wheel (`pip wheel .`), installs it into a fresh venv that has no Cython,
# and checks that the compiled fast path is active, the gateway serves /healthz, and the
# demo page and the JavaScript client are in the wheel and served (/demo/, /client/*).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
python -m pip wheel -q --no-deps . -w "$work/dist"
wheel=$(ls "$work"/dist/wsprism-*.whl)
python -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); sys.exit(not all(any(n.startswith(f'wsprism/_fast/{m}.') and n.endswith('.so') for n in names) for m in ('bucket_c', 'utf8_c', 'hotheader_c', 'fanout_c', 'framer_c', 'reader_c')))" "$wheel" \
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
"$work/venv/bin/pip" install -q "$wheel"
if "$work/venv/bin/python" -c "import Cython" 2>/dev/null; then
  echo "check_wheel: Cython leaked into the runtime venv"; exit 1
fi
"$work/venv/bin/wsprism" version | tee "$work/version.txt"
grep -q "compiled fast path: active" "$work/version.txt"
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
    echo "check_wheel: ok ($(basename "$wheel") installs without Cython, compiled path active, /healthz 200, demo and client served)"
    exit 0
  fi
  sleep 0.1
done
echo "check_wheel: gateway from the wheel did not answer /healthz"; cat "$work/gw.log"; exit 1
