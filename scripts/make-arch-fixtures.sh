#!/usr/bin/env bash
# Regenerates tests/fixtures/arch/ (random tiny BERT-family models + reference outputs) with the real
# Hugging Face libraries. For reproducibility only: NOT run by the tests or CI.
#   venv: .cache/ref-venv (git-ignored), from PyPI only; nothing is read from any model hub.
# Note: the PyPI torch wheel for Linux is the CUDA build; it cannot even be imported on CPU without the
# nvidia-* runtime wheels it depends on (libcudart, libcublas, ...), so torch is installed WITH its
# dependencies (about 6 GB in the venv). No GPU is needed or used.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.cache/ref-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet \
  torch==2.15.0 \
  transformers==5.24.0 \
  peft==0.21.2 \
  sentence-transformers==6.2.0 \
  accelerate==1.16.0 \
  tokenizers==0.23.3 \
  safetensors==0.8.0 \
  numpy==2.4.6 \
  scikit-learn==1.9.1 \
  scipy==1.17.1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
"$venv/bin/python" scripts/make-arch-fixtures.py
du -sh tests/fixtures/arch
