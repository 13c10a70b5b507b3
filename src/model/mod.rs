//! BERT-family encoders: config, weights, tokenizer, forward (and, in training mode, what the
//! backward pass needs), and the sentence-embedding pipeline of all-MiniLM-L6-v2.

pub mod bert;
pub mod config;
pub mod encoder;
pub mod tiny;
pub mod tokenizer;
pub mod weights;

pub use bert::{Bert, Inputs, Mode, Output};
pub use config::BertConfig;
pub use tokenizer::Tokenizer;
pub use weights::{HostTensor, NamedTensors};

use crate::error::{Error, Result};
use crate::tensor::Device;

/// An encoder with its tokenizer: what `embed`, training and the web app load.
pub struct Model {
    pub bert: Bert,
    pub tokenizer: Tokenizer,
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
        let config = BertConfig::from_json(config_json, &format!("{origin}/config.json"))?;
        let tokenizer = Tokenizer::from_json_str(tokenizer_json, &format!("{origin}/tokenizer.json"))?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(Error::file(
                format!("{origin}/tokenizer.json"),
                format!("has {} tokens but config.json says vocab_size {}", tokenizer.vocab_size(), config.vocab_size),
            ));
        }
        let weights = NamedTensors::from_bytes(safetensors, &format!("{origin}/model.safetensors"))?;
        let bert = Bert::from_named(config, weights, device)?;
        Ok(Model { bert, tokenizer, origin: origin.to_string() })
    }

    /// Loads a Hugging Face model folder (config.json, model.safetensors, tokenizer.json).
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
        Self::from_bytes(&config, &weights, &tokenizer, &dir.display().to_string(), device)
    }

    /// Tokenizes `texts` (truncating to `max_len` tokens, padding to the longest) onto the device.
    pub fn encode(&self, texts: &[&str], max_len: usize) -> Result<Encoded> {
        if texts.is_empty() {
            return Err(Error::invalid("no texts to encode"));
        }
        let max_len = max_len.min(self.bert.config.max_position_embeddings);
        let b = self.tokenizer.encode_batch(texts, max_len);
        let inputs =
            Inputs::new(&self.bert.device, &b.input_ids, &b.attention_mask, &b.token_type_ids, b.batch, b.seq_len)?;
        Ok(Encoded { inputs, lengths: b.lengths, truncated: b.truncated })
    }

    /// L2-normalised mean-pooled sentence embeddings of `texts`, `batch` texts at a time.
    /// Returns the embeddings and how many texts were truncated.
    pub async fn embed(&self, texts: &[&str], max_len: usize, batch: usize) -> Result<(Vec<Vec<f32>>, usize)> {
        let mut out = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        let c = self.bert.config.hidden_size;
        for chunk in texts.chunks(batch.max(1)) {
            let enc = self.encode(chunk, max_len)?;
            truncated += enc.truncated;
            let o = self.bert.forward(&enc.inputs, Mode::Inference, false)?;
            let e = self.bert.sentence_embedding(&o.hidden, &enc.inputs)?.to_vec().await?;
            out.extend(e.chunks_exact(c).map(|r| r.to_vec()));
        }
        Ok((out, truncated))
    }
}
