//! Transformer models: the architecture seam (`arch`: config.json → sizes and layer description),
//! the BERT-family encoder with the hooks that fine-tuning methods implement (`encoder`, `hooks`),
//! named parameter sets (`param_set`), weights (safetensors), tokenizers and sentence pooling.

pub mod arch;
pub mod bpe;
mod bpe_tables;
pub mod encoder;
pub mod generate;
pub mod gguf;
pub mod hooks;
pub mod llama;
#[cfg(not(target_arch = "wasm32"))]
pub mod llama_hf;
pub mod param_set;
pub mod pooling;
pub mod stream;
pub mod tiny;
pub mod tiny_llama;
pub mod tokenizer;
pub mod weights;

pub use arch::{EncoderConfig, LayerDesc, Target};
pub use encoder::{Encoder, Inputs, Mode, Output};
pub use param_set::{ParamId, ParamSet};
pub use pooling::Pooling;
pub use tokenizer::Tokenizer;
pub use weights::{HostTensor, NamedTensors};

use crate::error::{Error, Result};
use crate::tensor::Device;

/// An encoder with its tokenizer and sentence pooling: what `embed`, training and the web app load.
pub struct Model {
    pub encoder: Encoder,
    pub tokenizer: Tokenizer,
    /// How `embed` turns token states into sentence vectors (the folder's own, when it says).
    pub pooling: Pooling,
    /// Where it came from (a folder, or the name given to in-memory files).
    pub origin: String,
}

/// How a batch of texts was encoded.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub inputs: Inputs,
    /// Tokens per text after truncation (with [CLS] and [SEP]).
    pub lengths: Vec<usize>,
    /// How many texts were truncated.
    pub truncated: usize,
}

impl Model {
    /// Builds a model from the contents of its files: config.json, model.safetensors, tokenizer.json.
    /// `origin` is used in error messages (the folder the files came from).
    pub fn from_bytes(
        config_json: &str,
        safetensors: &[u8],
        tokenizer_json: &str,
        origin: &str,
        device: &Device,
    ) -> Result<Model> {
        let (config, desc) = arch::from_config_json(config_json, &format!("{origin}/config.json"))?;
        let tokenizer = Tokenizer::from_json_str(tokenizer_json, &format!("{origin}/tokenizer.json"))?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(Error::file(
                format!("{origin}/tokenizer.json"),
                format!("has {} tokens but config.json says vocab_size {}", tokenizer.vocab_size(), config.vocab_size),
            ));
        }
        let weights = NamedTensors::from_bytes(safetensors, &format!("{origin}/model.safetensors"))?;
        weights.check_finite("a base weight")?;
        let encoder = Encoder::from_named(config, desc, weights, device)?;
        Ok(Model { encoder, tokenizer, pooling: Pooling::default(), origin: origin.to_string() })
    }

    /// Loads a Hugging Face model folder (config.json, model.safetensors, tokenizer.json), with a
    /// sentence-transformers folder's own pooling (modules.json, 1_Pooling/config.json).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &std::path::Path, device: &Device) -> Result<Model> {
        let read = |name: &str| -> Result<Vec<u8>> {
            let p = dir.join(name);
            if !p.exists() {
                let hint = match name {
                    "model.safetensors" if dir.join("pytorch_model.bin").exists() => {
                        " (this folder has pytorch_model.bin: convert it to safetensors first)"
                    }
                    _ => "",
                };
                return Err(Error::file(
                    &p,
                    format!("missing: a model folder needs config.json, model.safetensors and tokenizer.json{hint}"),
                ));
            }
            std::fs::read(&p).map_err(|e| Error::file(&p, e))
        };
        let text = |name: &str| -> Result<String> {
            String::from_utf8(read(name)?).map_err(|_| Error::file(dir.join(name), "is not valid UTF-8"))
        };
        let config = text("config.json")?;
        let tokenizer = text("tokenizer.json")?;
        let weights = read("model.safetensors")?;
        let origin = dir.display().to_string();
        let mut model = Self::from_bytes(&config, &weights, &tokenizer, &origin, device)?;
        let optional = |name: &str| -> Result<Option<String>> {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::file(dir.join(name), e)),
            }
        };
        model.pooling = Pooling::from_folder(&optional, &origin)?;
        Ok(model)
    }

    /// Tokenizes `texts` (truncating to `max_len` tokens, padding to the longest) onto the device.
    pub fn encode(&self, texts: &[&str], max_len: usize) -> Result<Encoded> {
        if texts.is_empty() {
            return Err(Error::invalid("no texts to encode"));
        }
        let max_len = max_len.min(self.encoder.max_len());
        let b = self.tokenizer.encode_batch(texts, max_len);
        let inputs = self.encoder.inputs(&b.input_ids, &b.attention_mask, &b.token_type_ids, b.batch, b.seq_len)?;
        Ok(Encoded { inputs, lengths: b.lengths, truncated: b.truncated })
    }

    /// Sentence embeddings of `texts` under the model's pooling, `batch` texts at a time.
    /// Returns the embeddings and how many texts were truncated.
    pub async fn embed(&self, texts: &[&str], max_len: usize, batch: usize) -> Result<(Vec<Vec<f32>>, usize)> {
        let mut out = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        let c = self.encoder.config.hidden_size;
        for chunk in texts.chunks(batch.max(1)) {
            let enc = self.encode(chunk, max_len)?;
            truncated += enc.truncated;
            let o = self.encoder.forward(&enc.inputs, Mode::Inference, false)?;
            let e = self.pooling.apply(&o.hidden, &enc.inputs)?.to_vec().await?;
            crate::error::check_rows_finite(&e, c, out.len(), chunk, "embedding")?;
            out.extend(e.chunks_exact(c).map(|r| r.to_vec()));
        }
        Ok((out, truncated))
    }
}
