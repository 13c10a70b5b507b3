"""Makes tests/fixtures/llama_st/ with transformers 5.24 and bitsandbytes 0.50.2 (CPU): a tiny random
LlamaForCausalLM saved as a Hugging Face folder (config.json, model.safetensors in f32, the tokenizer of
tests/fixtures/bpe_json/digits), and its next-token logits for a batch of prompts in f32 and loaded in 4 bits
(BitsAndBytesConfig nf4, without and with double quantisation, f32 compute, the model in training mode so
that bitsandbytes multiplies in f32), with greedy continuations.

Run: .cache/ref-venv/bin/python scripts/make-llama-st-fixtures.py. Not run by the tests or CI."""
import json
import shutil

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

OUT = "tests/fixtures/llama_st"
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained("tests/fixtures/bpe_json/digits")
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                  rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.2,
                  bos_token_id=0, eos_token_id=1, pad_token_id=2)
model = LlamaForCausalLM(cfg).eval()
with torch.no_grad():  # norms away from one, so that a loader that skips them fails
    for n, p in model.named_parameters():
        if "norm" in n:
            p.copy_(0.8 + 0.4 * torch.rand_like(p))
model.save_pretrained(f"{OUT}/model", safe_serialization=True)
for f in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(f"tests/fixtures/bpe_json/digits/{f}", f"{OUT}/model/{f}")
# SmolLM2's ChatML template, so that chats can train (its markers are plain text to this vocabulary).
shutil.copy("tests/fixtures/bpe_json/smollm2/chat_template.jinja", f"{OUT}/model/chat_template.jinja")

prompts = ["The food was great", "Service 5 stars, 2 minutes wait", "cold"]
out, meta = {}, {"prompts": prompts, "ids": []}
variants = [("f32", None),
            ("nf4", BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_compute_dtype=torch.float32, bnb_4bit_use_double_quant=False)),
            ("nf4dq", BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                         bnb_4bit_compute_dtype=torch.float32, bnb_4bit_use_double_quant=True))]
for name, q in variants:
    # Training mode (no dropout in this config): bitsandbytes' Linear4bit then de-quantises and multiplies
    # in f32, as QLoRA trains; in eval mode on a CPU with AVX512-BF16 it repacks the weight for a bf16
    # kernel, which moves the logits by ~1e-2.
    m = AutoModelForCausalLM.from_pretrained(f"{OUT}/model", dtype=torch.float32, quantization_config=q,
                                             device_map="cpu", attn_implementation="eager").train()
    for i, p in enumerate(prompts):
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            out[f"{name}_logits{i}"] = m(ids).logits[0].contiguous()
            g = m.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=2)
        out[f"{name}_greedy{i}"] = g[0, ids.shape[1]:].contiguous()
        if name == "f32":
            meta["ids"].append(ids[0].tolist())
save_file(out, f"{OUT}/expected.safetensors")
json.dump(meta, open(f"{OUT}/meta.json", "w"), indent=1)
print({k: tuple(v.shape) for k, v in out.items()})
