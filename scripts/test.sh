#!/usr/bin/env bash
# Runs every test: installs what they need (scripts/setup.sh), then the Rust tests on both devices
# (GPU tests run on lavapipe where there is no GPU; under CI a missing adapter fails them), and the
# wasm build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/setup.sh"

export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export LOCALTUNE_MODEL="${LOCALTUNE_MODEL:-$root/.cache/models/all-MiniLM-L6-v2}"
export LOCALTUNE_DATA="${LOCALTUNE_DATA:-$root/.cache/data/sentiment}"

echo "== cargo test"
cargo test
echo "== wasm build"
"$root/scripts/build-wasm.sh"
echo "== browser test (headless Chromium)"
LOCALTUNE_BIN="$root/target/debug/localtune" node --test --test-reporter=spec tests/browser/
