//! The command-line tool, run as a user would: texts on stdin, JSON lines out.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

fn run(args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_localtune"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The tool may exit before reading its input (bad arguments): a broken pipe is not the test's failure.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn info_json_describes_the_cpu_and_the_adapter() {
    let (ok, out, err) = run(&["info", "--json"], b"");
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["cpu"]["threads"].as_u64().unwrap() >= 1);
    if common::gpu().is_some() {
        let g = &v["gpu"];
        assert!(g["name"].is_string() && g["max_storage_buffer_binding_size"].as_u64().unwrap() > 0, "{v}");
        assert!(g["shader_f16"].is_boolean() && g["subgroups"].is_boolean() && g["timestamp_query"].is_boolean());
    }
}

#[test]
fn tokenize_prints_ids_in_order_and_counts_truncation() {
    let Some(dir) = common::model_dir() else {
        return;
    };
    let long = "word ".repeat(100);
    let input = format!("Hello world!\n\n{long}\n");
    let (ok, out, err) = run(&["tokenize", "--model", dir.to_str().unwrap(), "--max-len", "16"], input.as_bytes());
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["input_ids"], serde_json::json!([101, 7592, 2088, 999, 102]));
    assert_eq!(lines[1]["input_ids"], serde_json::json!([101, 102]), "an empty line is the empty text");
    assert_eq!(lines[2]["input_ids"].as_array().unwrap().len(), 16);
    assert_eq!(lines[2]["truncated"], true);
    assert!(err.contains("1 text(s) were truncated to 16 tokens"), "{err}");
}

#[test]
fn embed_reads_jsonl_and_matches_line_input() {
    let Some(dir) = common::model_dir() else {
        return;
    };
    let d = dir.to_str().unwrap();
    let (ok, plain, err) = run(&["embed", "--model", d, "--device", "cpu"], "a cat\nthe dog\n".as_bytes());
    assert!(ok, "{err}");
    let (ok, jsonl, err) = run(
        &["embed", "--model", d, "--device", "cpu", "--jsonl"],
        "\"a cat\"\n{\"text\": \"the dog\"}\n\"two\\nlines\"\n".as_bytes(),
    );
    assert!(ok, "{err}");
    let p: Vec<&str> = plain.lines().collect();
    let j: Vec<&str> = jsonl.lines().collect();
    assert_eq!(j.len(), 3);
    assert_eq!(p[..], j[..2]);
    let e: serde_json::Value = serde_json::from_str(j[0]).unwrap();
    let v: Vec<f64> = e["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(v.len(), 384);
    let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
}

#[test]
fn bad_input_names_the_line() {
    let Some(dir) = common::model_dir() else {
        return;
    };
    let d = dir.to_str().unwrap();
    let (ok, _, err) = run(&["tokenize", "--model", d], b"fine\n\xff\xfe bad\n");
    assert!(!ok);
    assert!(err.contains("<stdin> line 2") && err.contains("invalid UTF-8"), "{err}");
    let (ok, _, err) = run(&["embed", "--model", d, "--device", "cpu", "--jsonl"], b"\"ok\"\n{\"txt\": 1}\n");
    assert!(!ok);
    assert!(err.contains("<stdin> line 2") && err.contains("\"text\""), "{err}");
    let (ok, _, err) = run(&["embed", "--model", "/nonexistent/model", "--device", "cpu"], b"x\n");
    assert!(!ok);
    assert!(err.contains("/nonexistent/model/config.json") && err.contains("missing"), "{err}");
}

/// `embed` applies a sentence-transformers folder's own pooling: sentence-transformers' own vectors
/// for its mean-sqrt-len + Normalize folder and its max-pooling folder (tests/fixtures/arch/st).
#[test]
fn embed_uses_the_folders_own_pooling() {
    let st = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/arch/st");
    let bytes = std::fs::read(format!("{st}/expected.safetensors")).unwrap();
    let fx = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let input = "the food was great !\ni hate this movie\nreally really good service\nnot bad\nthe worst phone\n";
    for folder in ["mean_sqrt_len_norm", "max"] {
        let dir = format!("{st}/{folder}");
        let (ok, out, err) = run(&["embed", "--model", &dir, "--device", "cpu"], input.as_bytes());
        assert!(ok, "{err}");
        let got: Vec<f32> = out
            .lines()
            .flat_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<_>>()
            })
            .collect();
        common::assert_close(folder, &got, &common::fixture_f32(&fx, &format!("embedding_{folder}")), 1e-5, 1e-4);
    }
}

#[test]
fn an_unsupported_architecture_is_named() {
    let dir = std::env::temp_dir().join(format!("localtune-gpt2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt2", "n_embd": 8}"#).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    std::fs::write(dir.join("model.safetensors"), b"").unwrap();
    let (ok, _, err) = run(&["embed", "--model", dir.to_str().unwrap(), "--device", "cpu"], b"x\n");
    assert!(!ok);
    assert!(err.contains("config.json") && err.contains("`gpt2`") && err.contains("distilbert"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn describe_prints_the_layer_description() {
    let arch = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/arch");
    let (ok, out, err) = run(&["describe", "--model", &format!("{arch}/distilbert")], b"");
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["layer"]["arch"], "distilbert");
    assert_eq!(v["layer"]["names"]["linears"][0], "attention.q_lin");
    assert_eq!(v["config"]["hidden_size"], 32);
    assert_eq!(v["config"]["type_vocab_size"], 0);
    let (ok, out, err) = run(&["describe", "--model", &format!("{arch}/st/max")], b"");
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pooling"], serde_json::json!({"mode": "max", "normalize": false}));
}

#[test]
fn generate_logits_and_tokenize_run_the_gguf_chat_model() {
    let Some(gguf) = common::llm_file() else { return };
    let g = gguf.to_str().unwrap();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama/meta.json")).unwrap(),
    )
    .unwrap();
    let chat = &meta["chats"][0];
    let question = chat["messages"][0]["content"].as_str().unwrap();
    let line = format!("{}\n", serde_json::Value::String(question.into()));
    // transformers' greedy answer to the chat, as ids and text.
    let (ok, out, err) = run(
        &["generate", "--model", g, "--chat", "--jsonl", "--device", "cpu", "--max-new-tokens", "16"],
        line.as_bytes(),
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ids"], chat["greedy16"]);
    assert_eq!(v["text"], chat["greedy16_text"]);
    // The largest next-token logit is the first greedy token.
    let (ok, out, err) =
        run(&["logits", "--model", g, "--chat", "--jsonl", "--device", "cpu", "--top", "2"], line.as_bytes());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ids"][0], chat["greedy16"][0]);
    assert!(v["logits"][0].as_f64().unwrap() >= v["logits"][1].as_f64().unwrap());
    let case = &meta["tokenizer_cases"][1];
    let (ok, out, err) = run(&["tokenize", "--model", g], format!("{}\n", case["text"].as_str().unwrap()).as_bytes());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["input_ids"], case["input_ids"]);
    // Settings that mean nothing are refused by flag.
    let (ok, _, err) = run(&["generate", "--model", g, "--greedy", "--temperature", "0.7"], b"hi\n");
    assert!(!ok && err.contains("--greedy and --temperature"), "{err}");
    let (ok, _, err) = run(&["generate", "--model", g, "--temperature", "0.7", "--top-p", "1.5"], b"hi\n");
    assert!(!ok && err.contains("--top-p"), "{err}");
    let (ok, _, err) = run(&["generate", "--model", "/nonexistent.gguf"], b"hi\n");
    assert!(!ok && err.contains("/nonexistent.gguf"), "{err}");
}

#[test]
fn a_hugging_face_llama_folder_quantised_to_nf4_tokenizes_generates_and_trains() {
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama_st");
    let dir = format!("{fx}/model");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{fx}/meta.json")).unwrap()).unwrap();
    let raw = std::fs::read(format!("{fx}/expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    let prompt = meta["prompts"][0].as_str().unwrap();
    let (ok, out, err) = run(&["tokenize", "--model", &dir], format!("{prompt}\n").as_bytes());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["input_ids"], meta["ids"][0]);
    // transformers + bitsandbytes' greedy tokens over the same folder in NF4 (up to the end of text).
    let mut want = common::fixture_ids(&st, "nf4_greedy0");
    if let Some(e) = want.iter().position(|&t| t == 1) {
        want.truncate(e + 1);
    }
    let args =
        ["generate", "--model", &dir, "--quantize", "nf4", "--greedy", "--device", "cpu", "--max-new-tokens", "12"];
    let (ok, out, err) = run(&args, format!("{prompt}\n").as_bytes());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ids"], serde_json::json!(want));
    // QLoRA over the NF4 base: the held-out loss falls, and the adapter generates.
    let tmp = std::env::temp_dir().join(format!("localtune-cli-llama-st-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let data = tmp.join("chats.jsonl");
    let lines: Vec<String> = (0..24)
        .map(|i| {
            let (q, a) = if i % 2 == 0 { ("great food", "positive") } else { ("cold food", "negative") };
            serde_json::json!({"prompt": format!("{q} {i}"), "completion": a}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out_dir = tmp.join("adapter");
    let (ok, out, err) = run(
        &[
            "train",
            "--task",
            "causal-lm",
            "--model",
            &dir,
            "--quantize",
            "nf4",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--epochs",
            "3",
            "--lr",
            "0.01",
            "--batch",
            "4",
            "--device",
            "cpu",
            "--json",
        ],
        b"",
    );
    assert!(ok, "{err}");
    let losses: Vec<f64> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["valid_loss"].as_f64())
        .collect();
    assert!(losses.len() >= 2 && losses.last() < losses.first(), "held-out losses {losses:?}");
    let args = [
        "generate",
        "--model",
        &dir,
        "--quantize",
        "nf4",
        "--adapter",
        out_dir.to_str().unwrap(),
        "--chat",
        "--greedy",
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
    ];
    let (ok, out, err) = run(&args, b"great food 99\n");
    assert!(ok, "{err}");
    assert!(out.contains("\"ids\""), "{out}");
    // --quantize applies to folders only.
    let (ok, _, err) = run(&["generate", "--model", "x.gguf", "--quantize", "nf4"], b"hi\n");
    assert!(!ok && err.contains("--quantize"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
