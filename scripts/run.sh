#!/usr/bin/env bash
# The main job: set-up, build, then show the device and the matmul benchmark.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/setup.sh"
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo build --release
"$root/scripts/build-wasm.sh"
./target/release/localtune info
./target/release/localtune bench matmul
