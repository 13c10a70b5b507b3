"""Reference values for the GGUF reader from the `gguf` package: see make-gguf-fixtures.sh."""
import importlib.metadata
import json
import sys

import numpy as np
import gguf
from gguf import quants

r = gguf.GGUFReader(sys.argv[1])


def meta(key):
    f = r.fields[key]
    v = f.contents()
    return v


out = {
    "generator": f"scripts/make-gguf-fixtures.py (gguf {importlib.metadata.version('gguf')}, numpy {np.__version__})",
    "version": int(meta("GGUF.version")),
    "tensor_count": len(r.tensors),
    "kv_count": int(meta("GGUF.kv_count")),
    "metadata": {k: meta(k) for k in [
        "general.architecture", "general.name", "llama.block_count", "llama.context_length",
        "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
        "llama.attention.head_count_kv", "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"]},
    "tokens": {"count": len(meta("tokenizer.ggml.tokens")), "first": meta("tokenizer.ggml.tokens")[:8],
               "last": meta("tokenizer.ggml.tokens")[-4:], "token_type_first": meta("tokenizer.ggml.token_type")[:8]},
    "merges": {"count": len(meta("tokenizer.ggml.merges")), "first": meta("tokenizer.ggml.merges")[:5]},
    "tensors": [],
}
rng = np.random.default_rng(3)
for t in r.tensors:
    entry = {"name": t.name, "type": t.tensor_type.name, "dims": [int(x) for x in t.shape], "offset": int(t.data_offset),
             "bytes": int(t.n_bytes)}
    if t.name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight", "blk.29.ffn_down.weight",
                  "output_norm.weight", "blk.3.attn_k.weight"):
        x = quants.dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
        idx = sorted(set([0, 1, 31, 32, 33, len(x) - 1] + rng.integers(0, len(x), 40).tolist()))
        entry["samples"] = {"index": idx, "value": [float(x[i]) for i in idx]}
        entry["sum"] = float(x.sum())
        entry["abs_sum"] = float(np.abs(x).sum())
    out["tensors"].append(entry)
blocks = {}
x = rng.normal(0, 1, (2, 64)).astype(np.float32)
for qt in (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0):
    q = quants.quantize(x, qt)
    blocks[qt.name] = {"bytes": q.tobytes().hex(), "values": quants.dequantize(q, qt).astype(np.float64).ravel().tolist()}
out["blocks"] = blocks
print(json.dumps(out))
