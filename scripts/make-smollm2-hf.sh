#!/usr/bin/env bash
# Writes .cache/models/smollm2-hf: SmolLM2-135M-Instruct as a Hugging Face folder (config.json,
# model.safetensors in f32, tokenizer.json, chat template), made by transformers from the GGUF that
# scripts/fetch-assets.sh fetched (transformers de-quantises every tensor and un-permutes q/k). For the
# NF4 figures of BENCHMARKS.md (`--model .cache/models/smollm2-hf --quantize nf4`); needs
# .cache/ref-venv (scripts/make-arch-fixtures.sh). Not run by the tests or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
HF_HUB_OFFLINE=1 .cache/ref-venv/bin/python - <<'PY'
import json, os
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
src, f, out = ".cache/models/smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", ".cache/models/smollm2-hf"
m = AutoModelForCausalLM.from_pretrained(src, gguf_file=f, dtype=torch.float32)
# transformers refuses to save a model it loaded from GGUF: write its config and (de-quantised) state
# dict as save_pretrained would, the tied head left out.
os.makedirs(out, exist_ok=True)
cfg = m.config.to_dict()
cfg.pop("quantization_config", None)
json.dump(cfg, open(f"{out}/config.json", "w"), indent=2)
sd = {k: v.contiguous() for k, v in m.state_dict().items() if k != "lm_head.weight"}
save_file(sd, f"{out}/model.safetensors", metadata={"format": "pt"})
AutoTokenizer.from_pretrained(src, gguf_file=f).save_pretrained(".cache/models/smollm2-hf")
PY
ls -la .cache/models/smollm2-hf
