#!/usr/bin/env bash
# The main job: set everything up, build the native tool and the wasm, and serve the web app on
# 127.0.0.1 with the default model (all-MiniLM-L6-v2) and the example data ready. Prints the URL.
#   PORT=8080 by default.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/setup.sh"
cargo build --release
"$root/scripts/build-wasm.sh"
exec ./target/release/localtune serve --port "${PORT:-8080}" --www www --tiny
