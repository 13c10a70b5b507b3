#!/bin/bash
# Makes tests/fixtures/transfer/scores.json: LogME, LEEP and NCE computed by the numpy reference in
# scripts/make-transfer-fixtures.py (thuml/LogME's definitions) on fixed features and predictions.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.cache/numpy-venv
[ -x $V/bin/python ] || python3 -m venv $V
$V/bin/pip install -q numpy==2.2.6
mkdir -p tests/fixtures/transfer
$V/bin/python scripts/make-transfer-fixtures.py > tests/fixtures/transfer/scores.json
