//! A tiny random Llama chat model as a GGUF file, for tests and quick tries in the page: SmolLM2's
//! layout and tokenizer scheme (byte-level BPE with the `smollm` pre-tokenizer, ChatML template with
//! the same Jinja text) at a size that trains in seconds: 2 layers, hidden 64, 4 query heads and 2
//! key/value heads, SwiGLU 128, the 256 byte tokens plus a few merges and the three special tokens,
//! Q8_0 linears (the quantised path) and an f32 embedding tied as the head.

use super::bpe::bytes_to_chars;
use super::gguf::{write_gguf, Value};
use crate::error::Result;
use crate::quant::GgmlType;
use crate::rng::Rng;

/// The Jinja chat template, as SmolLM2's file has it (with a shorter default system prompt).
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Merges over byte tokens (GPT-2's byte characters: `Ġ` is the space), most common English pairs.
const MERGES: [(&str, &str); 12] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("o", "n"),
    ("Ġt", "he"),
    ("r", "e"),
    ("a", "t"),
    ("e", "n"),
    ("o", "r"),
    ("i", "s"),
    ("Ġ", "a"),
];

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const LAYERS: usize = 2;
const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FFN: usize = 128;
const CONTEXT: u32 = 512;

/// Q8_0 blocks of a (rows, cols) weight with entries of about `std`: per block of 32, an f16 scale and
/// 32 signed codes.
fn q8_0(rng: &mut Rng, rows: usize, cols: usize, std: f64) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows * cols / 32 * 34);
    for _ in 0..rows * cols / 32 {
        out.extend(half::f16::from_f32((std * 2.0 / 127.0) as f32).to_le_bytes());
        out.extend((0..32).map(|_| (rng.below(255) as i32 - 127) as i8 as u8));
    }
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tiny model's GGUF file, the same bytes for the same seed.
pub fn tiny_llama_gguf(seed: u64) -> Result<Vec<u8>> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(bytes_to_chars().iter().map(|c| c.to_string()));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    let mut types = vec![Value::I32(3); SPECIALS.len()];
    types.resize(tokens.len(), Value::I32(1));
    let vocab = tokens.len();
    let str_array = |v: Vec<String>| Value::Array(v.into_iter().map(Value::Str).collect());
    let metadata = [
        ("general.architecture", Value::Str("llama".into())),
        ("general.name", Value::Str("tiny random Llama (localtune tests)".into())),
        ("general.alignment", Value::U32(32)),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.context_length", Value::U32(CONTEXT)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.rope.dimension_count", Value::U32((HIDDEN / HEADS) as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(vocab as u32)),
        ("tokenizer.ggml.model", Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Value::Str("smollm".into())),
        ("tokenizer.ggml.tokens", str_array(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", str_array(MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect())),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.padding_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", Value::Str(CHAT_TEMPLATE.into())),
    ];
    let mut rng = Rng::new(seed);
    let (c, kv, f) = (HIDDEN, KV_HEADS * HIDDEN / HEADS, FFN);
    let norm = |rng: &mut Rng| -> Vec<u8> {
        f32_bytes(&(0..c).map(|_| (0.8 + 0.4 * rng.uniform()) as f32).collect::<Vec<_>>())
    };
    let mut owned: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)> = Vec::new();
    let embd = f32_bytes(&rng.vec_normal(vocab * c, 0.5));
    owned.push(("token_embd.weight".into(), vec![c as u64, vocab as u64], GgmlType::F32, embd));
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        owned.push((n("attn_norm"), vec![c as u64], GgmlType::F32, norm(&mut rng)));
        for (name, rows, cols) in [
            ("attn_q", c, c),
            ("attn_k", kv, c),
            ("attn_v", kv, c),
            ("attn_output", c, c),
            ("ffn_gate", f, c),
            ("ffn_up", f, c),
            ("ffn_down", c, f),
        ] {
            let w = q8_0(&mut rng, rows, cols, 1.0 / (cols as f64).sqrt());
            owned.push((n(name), vec![cols as u64, rows as u64], GgmlType::Q8_0, w));
        }
        owned.push((n("ffn_norm"), vec![c as u64], GgmlType::F32, norm(&mut rng)));
    }
    owned.push(("output_norm.weight".into(), vec![c as u64], GgmlType::F32, norm(&mut rng)));
    let tensors: Vec<(&str, Vec<u64>, GgmlType, &[u8])> =
        owned.iter().map(|(n, d, k, b)| (n.as_str(), d.clone(), *k, &b[..])).collect();
    write_gguf(&metadata, &tensors)
}
