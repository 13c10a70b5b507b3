#!/usr/bin/env python3
"""Reference fixtures for the BERT-family architectures and sentence-transformers pooling modes.

Builds small RANDOM models (from config objects; nothing is read from any hub) with the real
Hugging Face libraries and writes them, with their reference outputs, into tests/fixtures/arch/:

  <arch>/config.json, <arch>/model.safetensors      exactly as transformers' save_pretrained writes them
  <arch>/peft_lora/adapter_config.json, adapter_model.safetensors   as PEFT's save_pretrained writes them
  <arch>/expected.safetensors, <arch>/meta.json      inputs and outputs
  st/<mode>/...                                      sentence-transformers model folders
  st/expected.safetensors, st/meta.json

Run through scripts/make-arch-fixtures.sh (makes the venv .cache/ref-venv). Deterministic: fixed
seeds, one thread, CPU float32, eval mode, eager attention. See tests/fixtures/arch/README.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

# PEFT stores target_modules as a set and writes it in set order: fix str hashing (re-exec once).
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
import sentence_transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraForPreTraining,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)
from peft import LoraConfig, get_peft_model  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "arch"

# ---------------------------------------------------------------------------------------------
# Tiny vocabulary. The brief's list has 101 entries, but the words "a" and "i" are already in the
# single letters a-z; a vocab.txt must not hold a token twice, so they are listed once: 99 tokens.
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCT = [".", ",", "!", "?", "'", "-"]
DIGITS = [str(d) for d in range(10)]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
SUFFIXES = ["##" + c for c in LETTERS]
WORDS_ASKED = ("the a is was it this i not very and good great love excellent best bad awful hate "
               "terrible worst movie food service place phone film really so").split()
WORDS = [w for w in WORDS_ASKED if w not in LETTERS]
VOCAB = SPECIALS + PUNCT + DIGITS + LETTERS + SUFFIXES + WORDS
assert len(VOCAB) == len(set(VOCAB)), "duplicate token in vocab"
VOCAB_SIZE = len(VOCAB)  # 99
DROPPED_DUPLICATES = [w for w in WORDS_ASKED if w in LETTERS]

HIDDEN, LAYERS, HEADS, INTER = 32, 2, 4, 37
B, T = 3, 9
LENGTHS = [9, 6, 4]
CLS_ID, SEP_ID = 2, 3

SENTENCES = [
    "the food was great !",
    "i hate this movie",
    "really really good service",
    "not bad",
    "the worst phone",
]

VERSIONS = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "peft": peft.__version__,
    "sentence_transformers": sentence_transformers.__version__,
    "tokenizers": tokenizers.__version__,
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}


# ---------------------------------------------------------------------------------------------
def reinit_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter, in named_parameters() order, from one seeded generator:
    LayerNorm weight 1 + N(0, 0.1); every bias N(0, 0.1); every other tensor N(0, 0.2)."""
    g = torch.Generator().manual_seed(seed)
    ln_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if id(p) in ln_weights:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def make_inputs(pad_id: int, seed: int = 1234):
    """[B, T] ids with right padding, row lengths LENGTHS; real tokens are CLS, random ids in
    [5, VOCAB_SIZE) (never a special id, never 0 or 1), SEP."""
    rng = np.random.default_rng(seed)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    for r, n in enumerate(LENGTHS):
        ids[r, 0] = CLS_ID
        ids[r, 1:n - 1] = rng.integers(5, VOCAB_SIZE, size=n - 2)
        ids[r, n - 1] = SEP_ID
        mask[r, :n] = 1
    return ids, mask


def common_bert_kwargs(**extra):
    kw = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        initializer_range=0.02,
    )
    kw.update(extra)
    return kw


def archs():
    """name -> (config, model class, has_pooler, has_token_types, pad id, lora targets, seed)."""
    return {
        "bert": dict(
            config=BertConfig(**common_bert_kwargs(max_position_embeddings=40, type_vocab_size=2, pad_token_id=0)),
            cls=BertModel, pooler=True, token_types=2, pad=0, targets=["query", "value"], seed=101,
        ),
        "roberta": dict(
            config=RobertaConfig(**common_bert_kwargs(
                max_position_embeddings=42, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
            cls=RobertaModel, pooler=True, token_types=1, pad=1, targets=["query", "value"], seed=102,
        ),
        "xlm-roberta": dict(
            config=XLMRobertaConfig(**common_bert_kwargs(
                max_position_embeddings=42, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
            cls=XLMRobertaModel, pooler=True, token_types=1, pad=1, targets=["query", "value"], seed=103,
        ),
        "distilbert": dict(
            config=DistilBertConfig(
                vocab_size=VOCAB_SIZE, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTER,
                max_position_embeddings=40, activation="gelu", sinusoidal_pos_embds=False,
                dropout=0.1, attention_dropout=0.1, pad_token_id=0,
            ),
            cls=DistilBertModel, pooler=False, token_types=0, pad=0, targets=["q_lin", "v_lin"], seed=104,
        ),
        "electra": dict(
            config=ElectraConfig(**common_bert_kwargs(
                embedding_size=24, max_position_embeddings=40, type_vocab_size=2, pad_token_id=0)),
            cls=ElectraForPreTraining, pooler=False, token_types=2, pad=0, targets=["query", "value"], seed=105,
        ),
    }


def build(cls, config, seed):
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="eager", torch_dtype=torch.float32)
    reinit_(model, seed)
    model.eval()
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    return model


def keep_only(folder: Path, names: set[str]) -> list[str]:
    dropped = []
    for p in sorted(folder.iterdir()):
        if p.name not in names:
            dropped.append(p.name)
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dropped


def st_keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def st_shapes(path: Path) -> dict[str, list[int]]:
    with safe_open(str(path), "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous().clone()


# ---------------------------------------------------------------------------------------------
def make_arch(name: str, spec: dict) -> dict:
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model = build(spec["cls"], spec["config"], spec["seed"])

    ids_np, mask_np = make_inputs(spec["pad"])
    ids = torch.from_numpy(ids_np)
    mask = torch.from_numpy(mask_np)
    tt = torch.zeros_like(ids)
    if spec["token_types"] == 2:
        tt[0, LENGTHS[0] // 2 + 1:LENGTHS[0]] = 1  # second half of row 0 is segment 1 (cols 5..8)

    kwargs = dict(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    if spec["token_types"]:
        kwargs["token_type_ids"] = tt
    with torch.no_grad():
        out = model(**kwargs)
        base_out = model.electra(**kwargs) if name == "electra" else out

    hs = out.hidden_states
    assert len(hs) == LAYERS + 1, len(hs)
    last = base_out.last_hidden_state
    assert torch.equal(hs[-1], last)

    # What HF used as position ids, and an independent check of hidden_states[0].
    emb_mod = model.electra.embeddings if name == "electra" else model.embeddings
    if name in ("roberta", "xlm-roberta"):
        pos = emb_mod.create_position_ids_from_input_ids(ids, spec["pad"])
    else:
        pos = torch.arange(T, dtype=torch.int64).unsqueeze(0).expand(B, T).contiguous()
    with torch.no_grad():
        if name == "distilbert":
            e = emb_mod(ids)
            manual = emb_mod.LayerNorm(emb_mod.word_embeddings(ids) + emb_mod.position_embeddings(pos))
        else:
            e = emb_mod(input_ids=ids, token_type_ids=tt, position_ids=pos)
            manual = emb_mod.LayerNorm(
                emb_mod.word_embeddings(ids) + emb_mod.position_embeddings(pos) + emb_mod.token_type_embeddings(tt)
            )
        assert torch.allclose(e, manual, atol=1e-6)
        if name == "electra":
            raw_embeddings = e
            e = model.electra.embeddings_project(e)
    assert torch.allclose(hs[0], e, atol=1e-6), f"{name}: hidden_states[0] is not what enters layer 0"

    expected = {
        "input_ids": ids.clone(),
        "attention_mask": mask.clone(),
    }
    if name != "distilbert":
        expected["token_type_ids"] = tt.clone()
    expected["position_ids"] = pos.clone()
    expected["embeddings_output"] = f32(hs[0])
    expected["hidden_state_layer0"] = f32(hs[1])
    expected["last_hidden_state"] = f32(last)
    if spec["pooler"]:
        expected["pooler_output"] = f32(out.pooler_output)
    if name == "electra":
        expected["embeddings_before_project"] = f32(raw_embeddings)
        expected["discriminator_logits"] = f32(out.logits)

    # Base model, as transformers writes it (before PEFT touches the modules).
    model.save_pretrained(d, safe_serialization=True)
    dropped = keep_only(d, {"config.json", "model.safetensors"})
    cfg_written = json.loads((d / "config.json").read_text())
    model_keys = st_keys(d / "model.safetensors")

    # Reload check: the saved folder gives the same outputs.
    reloaded = spec["cls"].from_pretrained(d, attn_implementation="eager").eval()
    with torch.no_grad():
        r = reloaded(**kwargs)
    assert torch.equal(r.hidden_states[-1], hs[-1]), f"{name}: reload differs"
    del reloaded

    # ---------------- PEFT LoRA on the base encoder --------------------------------------
    base = model.electra if name == "electra" else model
    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=spec["targets"], lora_dropout=0.0,
                      init_lora_weights=False, bias="none")
    torch.manual_seed(spec["seed"] + 1000)
    pm = get_peft_model(base, lcfg)
    pm.eval()
    b_was_zero = all(
        float(p.detach().abs().max()) == 0.0 for n, p in pm.named_parameters() if "lora_B" in n
    )
    # Fill A and B ourselves (seeded N(0, 0.2)) so the delta is large enough to show.
    g = torch.Generator().manual_seed(spec["seed"] + 2000)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    lora_kwargs = {k: v for k, v in kwargs.items() if k != "output_hidden_states"}
    with torch.no_grad():
        lo = pm(**lora_kwargs)
    expected["last_hidden_state_lora"] = f32(lo.last_hidden_state)
    assert not torch.allclose(expected["last_hidden_state_lora"], expected["last_hidden_state"], atol=1e-3)

    # Manual check of the LoRA formula on layer 0's query: W x + b + (alpha/r) B A x.
    if name == "distilbert":
        q = pm.base_model.model.transformer.layer[0].attention.q_lin
    else:
        q = pm.base_model.model.encoder.layer[0].attention.self.query
    with torch.no_grad():
        x = torch.randn(5, HIDDEN, generator=g)
        want = x @ q.base_layer.weight.T + q.base_layer.bias + 2.0 * (x @ q.lora_A["default"].weight.T) @ q.lora_B["default"].weight.T
        assert torch.allclose(q(x), want, atol=1e-5)

    ld = d / "peft_lora"
    pm.save_pretrained(ld, safe_serialization=True)
    peft_dropped = keep_only(ld, {"adapter_config.json", "adapter_model.safetensors"})
    peft_keys = st_keys(ld / "adapter_model.safetensors")
    peft_shapes = st_shapes(ld / "adapter_model.safetensors")
    adapter_cfg = json.loads((ld / "adapter_config.json").read_text())

    save_file(expected, str(d / "expected.safetensors"))

    notes = [
        "Random weights: every parameter re-drawn after construction from torch.Generator(seed) in "
        "named_parameters() order: LayerNorm weight 1+N(0,0.1), biases N(0,0.1), all else N(0,0.2).",
        "Inputs: right padding, row lengths [9, 6, 4]; real ids are 2 (CLS-like), random in [5, 99), 3 (SEP-like); "
        f"padding id {spec['pad']}.",
        "embeddings_output = hidden_states[0] = the tensor that enters encoder layer 0 (checked in the script "
        "against the embeddings module).",
        "Padded positions of every output are what HF computes there (their queries still attend to the real "
        "keys); compare them or mask them, both are valid references.",
        "eager attention: the additive mask is torch.finfo(float32).min on padded keys.",
    ]
    if name in ("roberta", "xlm-roberta"):
        notes.append(
            "position_ids (stored) come from create_position_ids_from_input_ids: padding_idx(1) + cumsum of "
            "non-pad tokens for real tokens, 1 for padding; so real positions start at 2 and the table has "
            "40 + 2 = 42 rows. Real tokens are never id 1. token_type_ids are all 0 (type_vocab_size 1)."
        )
    else:
        notes.append("position_ids (stored) = arange(T) in every row, padding included.")
    if name == "bert" or name == "electra":
        notes.append("token_type_ids: row 0 columns 5..8 are 1, everything else 0.")
    if name == "distilbert":
        notes.append("DistilBERT has no token types: no token_type_ids tensor; not passed to the model.")
    if name == "electra":
        notes.append(
            "ElectraForPreTraining: embeddings are 24 wide; electra.embeddings_project (Linear 24->32) maps them "
            "to the hidden size. embeddings_output is AFTER embeddings_project (32 wide); "
            "embeddings_before_project [3,9,24] is the embeddings LayerNorm output before it. "
            "discriminator_logits [3,9] = discriminator_predictions(last_hidden_state). The PEFT adapter is on "
            "model.electra (ElectraModel), so its keys have no 'electra.' segment."
        )
    notes.append(
        "PEFT: LoraConfig(r=4, lora_alpha=8 (scale 2), target_modules=%s, lora_dropout=0, init_lora_weights=False, "
        "no task_type); after get_peft_model every lora_A/lora_B was refilled with N(0,0.2) from a seeded "
        "generator (with init_lora_weights=False PEFT leaves B %s). last_hidden_state_lora is the "
        "PeftModel's last_hidden_state on the same inputs." % (spec["targets"], "zero" if b_was_zero else "non-zero, kaiming-uniform")
    )

    meta = {
        "name": name,
        "model_type": cfg_written["model_type"],
        "class": spec["cls"].__name__,
        "config": cfg_written,
        "model_safetensors_keys": model_keys,
        "model_safetensors_shapes": st_shapes(d / "model.safetensors"),
        "files_dropped_after_save_pretrained": dropped,
        "expected_tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                             for k, v in expected.items()},
        "lengths": LENGTHS,
        "pad_token_id": spec["pad"],
        "seed": spec["seed"],
        "peft": {
            "base_wrapped": "ElectraModel (model.electra)" if name == "electra" else spec["cls"].__name__,
            "target_modules": spec["targets"],
            "r": 4,
            "lora_alpha": 8,
            "scaling": 2.0,
            "init_lora_weights_false_left_B_zero": b_was_zero,
            "adapter_model_keys": peft_keys,
            "adapter_model_shapes": peft_shapes,
            "adapter_config": adapter_cfg,
            "files_dropped_after_save_pretrained": peft_dropped,
        },
        "versions": VERSIONS,
        "notes": notes,
    }
    write_json(d / "meta.json", meta)
    return meta


# ---------------------------------------------------------------------------------------------
def make_tokenizer(folder: Path) -> BertTokenizerFast:
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    # transformers 5 ignores vocab_file= here (it would build a 5-token vocabulary): pass the dict.
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True, model_max_length=40)
    assert tok.backend_tokenizer.get_vocab_size() == VOCAB_SIZE
    for s in SENTENCES:
        assert tok.unk_token_id not in tok(s)["input_ids"], s
    return tok


def make_st() -> dict:
    d = OUT / "st"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    spec = archs()["bert"]
    modes = {
        "cls_norm": ("cls", True),
        "max": ("max", False),
        "mean_sqrt_len_norm": ("mean_sqrt_len_tokens", True),
        "mean": ("mean", False),
    }
    expected = {}
    meta_modes = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "bert-tiny"
        src.mkdir()
        tok = make_tokenizer(src)
        tok.save_pretrained(src)
        # Same weights as tests/fixtures/arch/bert (same config and seed).
        model = build(spec["cls"], spec["config"], spec["seed"])
        model.save_pretrained(src, safe_serialization=True)

        features = None
        for folder, (mode, norm) in modes.items():
            torch.manual_seed(0)
            modules = [
                Transformer(str(src), max_seq_length=40, model_kwargs={"attn_implementation": "eager"}),
                Pooling(HIDDEN, pooling_mode=mode),
            ]
            if norm:
                modules.append(Normalize())
            st = SentenceTransformer(modules=modules, device="cpu")
            st.eval()
            emb = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False, batch_size=32)
            feats = st.preprocess(SENTENCES) if hasattr(st, "preprocess") else st.tokenize(SENTENCES)
            if features is None:
                features = feats
            else:
                assert torch.equal(features["input_ids"], feats["input_ids"])
            out_dir = d / folder
            # encode() leaves the fast tokenizer's padding (BatchLongest) and truncation (40) switched on,
            # and save() would write them into tokenizer.json: switch them off first.
            backend = st[0].tokenizer.backend_tokenizer
            backend.no_padding()
            backend.no_truncation()
            st.save(str(out_dir))
            dropped = []
            for extra in ("README.md",):
                if (out_dir / extra).exists():
                    (out_dir / extra).unlink()
                    dropped.append(extra)
            # The saved folder reloads to the same embeddings.
            st2 = SentenceTransformer(str(out_dir), device="cpu", model_kwargs={"attn_implementation": "eager"})
            emb2 = st2.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False, batch_size=32)
            assert np.allclose(emb, emb2, atol=1e-6), folder
            expected[f"embedding_{folder}"] = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
            tj = json.loads((out_dir / "tokenizer.json").read_text())
            meta_modes[folder] = {
                "pooling_mode": mode,
                "normalize": norm,
                "files": sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file()),
                "files_dropped": dropped,
                "tokenizer_json_padding": tj.get("padding"),
                "tokenizer_json_truncation": tj.get("truncation"),
                "modules_json": json.loads((out_dir / "modules.json").read_text()),
                "pooling_config": json.loads((out_dir / "1_Pooling" / "config.json").read_text()),
            }
            assert tj.get("padding") is None, tj.get("padding")
            assert tj.get("truncation") is None, tj.get("truncation")
            # The raw tokenizers library on the saved tokenizer.json gives the same ids.
            raw = tokenizers.Tokenizer.from_file(str(out_dir / "tokenizer.json"))
            raw.enable_padding(pad_id=0, pad_token="[PAD]")
            enc = raw.encode_batch(SENTENCES)
            assert [e.ids for e in enc] == feats["input_ids"].tolist()
            assert [e.attention_mask for e in enc] == feats["attention_mask"].tolist()

    # By hand from the BertModel itself: the pooling formulas the Rust side has to match.
    with torch.no_grad():
        h = model(input_ids=features["input_ids"], attention_mask=features["attention_mask"],
                  token_type_ids=features.get("token_type_ids")).last_hidden_state
    m = features["attention_mask"].unsqueeze(-1).to(torch.float32)
    n = m.sum(1)
    by_hand = {
        "cls_norm": torch.nn.functional.normalize(h[:, 0], dim=-1),
        "max": h.masked_fill(m == 0, float("-inf")).max(1).values,
        "mean_sqrt_len_norm": torch.nn.functional.normalize((h * m).sum(1) / n.sqrt(), dim=-1),
        "mean": (h * m).sum(1) / n,
    }
    for folder, want in by_hand.items():
        assert torch.allclose(expected[f"embedding_{folder}"], want, atol=1e-5), folder

    expected["input_ids"] = features["input_ids"].to(torch.int64).contiguous()
    expected["attention_mask"] = features["attention_mask"].to(torch.int64).contiguous()
    if "token_type_ids" in features:
        expected["token_type_ids"] = features["token_type_ids"].to(torch.int64).contiguous()
    save_file(expected, str(d / "expected.safetensors"))
    tokens = [[VOCAB[i] for i, m in zip(row, mrow) if m] for row, mrow in
              zip(expected["input_ids"].tolist(), expected["attention_mask"].tolist())]
    meta = {
        "sentences": SENTENCES,
        "tokens": tokens,
        "vocab": VOCAB,
        "vocab_size": VOCAB_SIZE,
        "modes": meta_modes,
        "expected_tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                             for k, v in expected.items()},
        "notes": [
            "Each folder: SentenceTransformer(modules=[Transformer(<tiny bert + BertTokenizerFast>, max_seq_length=40), "
            "Pooling(32, pooling_mode=...), Normalize() for *_norm]).save(folder); the model card README.md is removed.",
            "The transformer weights are those of tests/fixtures/arch/bert (same config, same seed).",
            "embedding_<folder> = model.encode(sentences, convert_to_numpy=True, normalize_embeddings=False); "
            "the *_norm folders are unit length because of their Normalize module.",
            "input_ids / attention_mask / token_type_ids = model.tokenize(sentences) (padding to the longest).",
        ],
        "versions": VERSIONS,
    }
    write_json(d / "meta.json", meta)
    return meta


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, spec in archs().items():
        m = make_arch(name, spec)
        summary[name] = (m["model_type"], len(m["model_safetensors_keys"]), m["peft"]["adapter_model_keys"][:2])
        assert m["model_type"] == {"xlm-roberta": "xlm-roberta"}.get(name, name), m["model_type"]
    make_st()
    for k, v in summary.items():
        print(k, v)
    total = 0
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
    print(f"vocab {VOCAB_SIZE} (dropped duplicates {DROPPED_DUPLICATES}); total {total} bytes")


if __name__ == "__main__":
    main()
