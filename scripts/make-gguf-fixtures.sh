#!/bin/bash
# Makes tests/fixtures/gguf/smollm2.json with the `gguf` Python package (llama.cpp's own reader, PyPI):
# the header, metadata and tensor table of the SmolLM2 GGUF that scripts/fetch-assets.sh fetched,
# de-quantised samples of its tensors, and Q4_0 / Q4_1 / Q8_0 blocks quantised by gguf.quants.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.cache/numpy-venv
[ -x $V/bin/python ] || python3 -m venv $V
$V/bin/pip install -q numpy==2.2.6 gguf==0.17.1
mkdir -p tests/fixtures/gguf
$V/bin/python scripts/make-gguf-fixtures.py .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > tests/fixtures/gguf/smollm2.json
