#!/usr/bin/env bash
# The JavaScript client's own checks, with pinned npm tools (installed once into .jstools/,
# git-ignored; needs node and npm):
#   bash scripts/js_check.sh size    sizes of clients/js/wsprism.js: raw, minified
#                                    (terser --module -c -m) and minified + gzip -9
#   bash scripts/js_check.sh types   tsc --strict over wsprism.d.ts and clients/js/test/usage.ts
set -euo pipefail
cd "$(dirname "$0")/.."
TERSER=5.51.4
TYPESCRIPT=5.9.3
TOOLS=.jstools
BIN=$TOOLS/node_modules/.bin
have() { [ -f "$TOOLS/node_modules/$1/package.json" ] && grep -q "\"version\": \"$2\"" "$TOOLS/node_modules/$1/package.json"; }
if ! have terser $TERSER || ! have typescript $TYPESCRIPT; then
  mkdir -p $TOOLS
  npm install --silent --no-audit --no-fund --no-save --no-package-lock --prefix $TOOLS \
    terser@$TERSER typescript@$TYPESCRIPT >/dev/null
fi
case "${1:-size}" in
  size)
    src=clients/js/wsprism.js
    min=$("$BIN/terser" "$src" --module -c -m | wc -c)
    gz=$("$BIN/terser" "$src" --module -c -m | gzip -9 | wc -c)
    echo "wsprism.js: raw $(wc -c < $src) B, min $min B, min+gzip $gz B (terser $TERSER --module -c -m | gzip -9)"
    ;;
  types)
    "$BIN/tsc" --strict --noEmit --target es2022 --module es2022 --moduleResolution bundler \
      --lib es2022,dom clients/js/test/usage.ts
    echo "wsprism.d.ts: tsc $TYPESCRIPT --strict ok"
    ;;
  *) echo "usage: $0 size|types" >&2; exit 2 ;;
esac
