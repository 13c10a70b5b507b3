//! BERT-family encoders: config, weights, tokenizer, forward (and, in training mode, what the
//! backward pass needs).

pub mod tokenizer;
