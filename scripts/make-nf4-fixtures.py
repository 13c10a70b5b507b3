"""Makes tests/fixtures/nf4/nf4.safetensors with bitsandbytes itself (CPU backend): a seeded weight,
its NF4 state with and without double quantisation (quantize_4bit, blocksize 64), the de-quantised
weight (dequantize_4bit) and a 4-bit linear's output (matmul_4bit) for a few input rows.

Run with the reference venv: .cache/ref-venv/bin/pip install bitsandbytes==0.50.2, then
.cache/ref-venv/bin/python scripts/make-nf4-fixtures.py. Not run by the tests or CI."""
import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch
from safetensors.torch import save_file

torch.manual_seed(0)
rows, cols = 24, 768  # 288 blocks of 64: the absmax codes span two blocks of 256
w = torch.randn(rows, cols) * torch.linspace(0.02, 0.3, rows).unsqueeze(1)
w[3, 100] = 1.5  # an outlier that sets its block's absmax
w[5, 64:128] = 0.0  # an all-zero block
x = torch.randn(5, cols)
out = {"weight": w.contiguous(), "x": x.contiguous()}
for name, double in (("plain", False), ("double", True)):
    q, s = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double)
    out[f"{name}_packed"] = q.reshape(-1).contiguous()
    if double:
        out[f"{name}_absmax_codes"] = s.absmax.contiguous()
        out[f"{name}_scale"] = s.state2.absmax.contiguous()
        out[f"{name}_offset"] = s.offset.reshape(1).float().contiguous()
        out["dynamic_code"] = s.state2.code.contiguous()
    else:
        out[f"{name}_absmax"] = s.absmax.contiguous()
    out[f"{name}_dequant"] = F.dequantize_4bit(q, s).contiguous()
    out[f"{name}_y"] = bnb.matmul_4bit(x, q.t(), quant_state=s).contiguous()
save_file(out, "tests/fixtures/nf4/nf4.safetensors",
          metadata={"bitsandbytes": bnb.__version__, "torch": torch.__version__})
print({k: tuple(v.shape) for k, v in out.items()})
