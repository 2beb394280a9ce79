#!/usr/bin/env bash
# Builds the wheel (`pip wheel .`), installs it into a fresh venv that has no Cython,
# and checks that the compiled fast path is active and the gateway serves /healthz.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
python -m pip wheel -q --no-deps . -w "$work/dist"
wheel=$(ls "$work"/dist/wsprism-*.whl)
python -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); sys.exit(not all(any(n.startswith(f'wsprism/_fast/{m}.') and n.endswith('.so') for n in names) for m in ('bucket_c', 'utf8_c', 'hotheader_c', 'fanout_c', 'framer_c', 'reader_c')))" "$wheel" \
  || { echo "check_wheel: compiled modules missing from $wheel"; exit 1; }
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
    echo "check_wheel: ok ($(basename "$wheel") installs without Cython, compiled path active, /healthz 200)"
    exit 0
  fi
  sleep 0.1
done
echo "check_wheel: gateway from the wheel did not answer /healthz"; cat "$work/gw.log"; exit 1
