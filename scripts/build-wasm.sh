#!/usr/bin/env bash
# Builds the library for wasm32 and generates www/pkg with wasm-bindgen (wasm-opt when available).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --lib --release --target wasm32-unknown-unknown
wasm-bindgen --target web --out-dir www/pkg target/wasm32-unknown-unknown/release/localtune.wasm
if command -v wasm-opt >/dev/null 2>&1; then
  wasm-opt -O2 --enable-bulk-memory --enable-nontrapping-float-to-int www/pkg/localtune_bg.wasm -o www/pkg/localtune_bg.wasm
fi
echo "built www/pkg ($(du -h www/pkg/localtune_bg.wasm | cut -f1) wasm)"
