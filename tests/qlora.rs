//! LoRA over the frozen (4-bit) Llama: a PEFT CAUSAL_LM adapter applied to SmolLM2's GGUF gives the
//! logits PEFT gave on transformers' model of the same file (tests/fixtures/llama/lora_logits, made
//! with PEFT 0.21.2), on both devices; the causal-LM loss's gradient through every layer matches
//! finite differences on a tiny random Llama (f32 and Q8_0 linears) and the GPU path matches the
//! CPU; adapters round-trip through PEFT's files; bad adapter folders are named.

mod common;

use common::*;
use localtune::model::gguf::Gguf;
use localtune::model::llama::{KvCache, LinearDelta, Llama, LlamaConfig};
use localtune::peft::causal_lora::{key, CausalLora, MODULES};
use localtune::quant::GgmlType;
use localtune::Device;
use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama");

fn smollm2(dev: &Device) -> Option<Llama> {
    let path = llm_file()?;
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::from_bytes(&bytes, &path.display().to_string()).unwrap();
    Some(Llama::from_gguf(&g, &bytes, dev).unwrap())
}

#[test]
fn a_peft_adapter_gives_the_logits_peft_gave() {
    let raw = std::fs::read(format!("{FIXTURES}/lora_logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    for dev in devices() {
        let Some(m) = smollm2(&dev) else { return };
        let lora = CausalLora::load(&Path::new(FIXTURES).join("peft_lora"), &m.cfg, &dev).unwrap();
        assert_eq!((lora.r, lora.targets.len()), (4, 7));
        for p in [0, 1] {
            let ids = fixture_ids(&st, &format!("prompt{p}_input_ids"));
            let want = fixture_f32(&st, &format!("prompt{p}_logits_lora"));
            let got = host(&m.forward_cached(&ids, &mut KvCache::default(), false, Some(&lora)).unwrap());
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!("prompt {p} with the adapter on {}: max |logit − PEFT| = {worst:.2e}", dev.describe());
            assert!(worst <= 1e-3, "prompt {p}: {worst}");
            // The adapter changes the logits by more than the tolerance, so the check has teeth.
            let base = host(&m.forward(&ids).unwrap());
            let moved = base.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(moved > 1e-2, "the adapter moves the logits by only {moved}");
        }
    }
}

fn tiny_cfg() -> LlamaConfig {
    LlamaConfig {
        layers: 2,
        hidden: 64,
        ffn: 96,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        vocab: 40,
        rope_base: 10000.0,
        eps: 1e-5,
        context: 32,
    }
}

/// A tiny adapter on every module with B drawn too (PEFT's B starts at zero, which hides dA).
fn tiny_lora(cfg: &LlamaConfig, dev: &Device) -> CausalLora {
    let mut lora = CausalLora::new(cfg, 2, 4.0, false, &[0, 1, 2, 3, 4, 5, 6], 7, dev).unwrap();
    let mut rng = Rng(11);
    for id in 0..lora.params.len() {
        if lora.params.name(id).ends_with("lora_B.weight") {
            let shape = lora.params[id].shape().to_vec();
            let t = dev.tensor(&rng.vec(shape.iter().product(), 0.3), &shape).unwrap();
            lora.params.set(id, t).unwrap();
        }
    }
    lora
}

/// Σ over `positions` of −log p(ids[p + 1]) from the plain forward's logits, in f64.
fn loss(m: &Llama, lora: &CausalLora, ids: &[u32], positions: &[u32]) -> f64 {
    let logits = host(&m.forward_cached(ids, &mut KvCache::default(), false, Some(lora as &dyn LinearDelta)).unwrap());
    let v = m.cfg.vocab;
    positions
        .iter()
        .map(|&p| {
            let row: Vec<f64> = logits[p as usize * v..(p as usize + 1) * v].iter().map(|&x| x as f64).collect();
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            lse - row[ids[p as usize + 1] as usize]
        })
        .sum()
}

fn grads(m: &Llama, lora: &CausalLora, ids: &[u32], positions: &[u32]) -> (f64, localtune::model::ParamSet) {
    let mut g = lora.params.zeros_like(&m.device).unwrap();
    let l = m.loss_backward(ids, positions, lora, &mut g, 1.0).unwrap();
    (host(&l).iter().map(|&x| x as f64).sum(), g)
}

#[test]
fn the_causal_lm_gradient_matches_finite_differences() {
    let cfg = tiny_cfg();
    let ids: Vec<u32> = vec![1, 5, 9, 3, 30, 12, 7, 7, 22, 39, 0, 14];
    // Only the answer trains: positions whose next token is one of the last five.
    let positions: Vec<u32> = (6..11).collect();
    for kind in [GgmlType::F32, GgmlType::Q8_0] {
        let m = Llama::random(cfg.clone(), kind, 3, &Device::Cpu).unwrap();
        let mut lora = tiny_lora(&cfg, &Device::Cpu);
        let (l, g) = grads(&m, &lora, &ids, &positions);
        let want = loss(&m, &lora, &ids, &positions);
        assert!((l - want).abs() < 1e-4 * want.abs().max(1.0), "{kind:?}: loss {l} against the forward's {want}");
        let mut rng = Rng(5);
        let mut checked = 0;
        for layer in 0..cfg.layers {
            for (mi, name) in MODULES.iter().enumerate() {
                for ab in ['A', 'B'] {
                    let id = lora.params.id(&key(layer, mi, ab)).unwrap();
                    let shape = lora.params[id].shape().to_vec();
                    let base = host(&lora.params[id]);
                    let gh = host(&g[id]);
                    for _ in 0..2 {
                        let i = rng.below(base.len() as u32) as usize;
                        let h = 1e-2;
                        let mut at = |d: f32| {
                            let mut v = base.clone();
                            v[i] += d;
                            lora.params.set(id, Device::Cpu.tensor(&v, &shape).unwrap()).unwrap();
                            loss(&m, &lora, &ids, &positions)
                        };
                        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                        lora.params.set(id, Device::Cpu.tensor(&base, &shape).unwrap()).unwrap();
                        let an = gh[i] as f64;
                        assert!(
                            (fd - an).abs() <= 2e-3 + 2e-2 * fd.abs().max(an.abs()),
                            "{kind:?} layer {layer} {name} lora_{ab}[{i}]: finite difference {fd}, backward {an}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 7 * 2 * 2);
        // Every tensor got a gradient: no module's backward was skipped.
        for (id, name) in lora.params.names().enumerate() {
            assert!(host(&g[id]).iter().any(|&x| x != 0.0), "{kind:?}: no gradient for {name}");
        }
    }
}

#[test]
fn the_gpu_backward_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cfg = tiny_cfg();
    let ids: Vec<u32> = vec![2, 8, 13, 21, 34, 5, 8, 13, 1, 2, 3, 4, 5, 6];
    let positions: Vec<u32> = (4..13).collect();
    let mut results = Vec::new();
    for dev in [Device::Cpu, gpu] {
        let m = Llama::random(cfg.clone(), GgmlType::Q8_0, 9, &dev).unwrap();
        let lora = tiny_lora(&cfg, &dev);
        results.push(grads(&m, &lora, &ids, &positions));
    }
    let ((lc, gc), (lg, gg)) = (&results[0], &results[1]);
    assert!((lc - lg).abs() < 1e-4 * lc.abs(), "loss cpu {lc}, gpu {lg}");
    for (id, name) in gc.names().enumerate() {
        assert_close(name, &host(&gg[id]), &host(&gc[id]), 1e-4, 1e-3);
    }
}

#[test]
fn adapters_round_trip_through_peft_files_and_bad_ones_are_named() {
    let cfg = tiny_cfg();
    let dir = std::env::temp_dir().join(format!("localtune-qlora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let lora = tiny_lora(&cfg, &Device::Cpu);
    futures::executor::block_on(lora.save(&dir)).unwrap();
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((c["peft_type"].as_str(), c["task_type"].as_str()), (Some("LORA"), Some("CAUSAL_LM")));
    assert_eq!(c["target_modules"].as_array().unwrap().len(), 7);
    let back = CausalLora::load(&dir, &cfg, &Device::Cpu).unwrap();
    for (name, t) in lora.params.iter() {
        assert_eq!(host(back.params.get(name).unwrap()), host(t), "{name}");
    }
    // The PEFT fixture is for 30 layers of 576: on the tiny model its first tensor has the wrong shape.
    let e = CausalLora::load(&Path::new(FIXTURES).join("peft_lora"), &cfg, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("adapter_model.safetensors") && e.contains("lora_A.weight") && e.contains("shape"), "{e}");
    // A sequence-classification adapter is refused by its task type.
    let mut other = c.clone();
    other["task_type"] = "SEQ_CLS".into();
    std::fs::write(dir.join("adapter_config.json"), other.to_string()).unwrap();
    let e = CausalLora::load(&dir, &cfg, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("SEQ_CLS"), "{e}");
}

#[test]
fn training_lowers_the_loss_of_the_answer_tokens() {
    use localtune::train::causal::{mean_loss, train, CausalSettings, ChatExample};
    let cfg = tiny_cfg();
    let m = Llama::random(cfg.clone(), GgmlType::Q8_0, 4, &Device::Cpu).unwrap();
    // Four "chats": a prompt of six tokens, then an answer that is a fixed function of the prompt.
    let data: Vec<ChatExample> = (0..4u32)
        .map(|i| {
            let prompt: Vec<u32> = (0..6).map(|j| (i * 7 + j * 3) % 40).collect();
            let answer = [(i * 5 + 1) % 40, (i * 11 + 2) % 40, 39];
            ChatExample { ids: [prompt, answer.to_vec()].concat(), positions: vec![5, 6, 7] }
        })
        .collect();
    let mut lora = CausalLora::new(&cfg, 4, 8.0, false, &[0, 1, 2, 3, 4, 5, 6], 1, &Device::Cpu).unwrap();
    let before = futures::executor::block_on(mean_loss(&m, &lora, &data)).unwrap();
    let optim = localtune::train::OptimConfig { lr: 1e-2, ..Default::default() };
    let s = CausalSettings { epochs: 20, batch: 2, seed: 0, optim };
    let reports = futures::executor::block_on(train(&m, &mut lora, &data, &data, &s, |_| {})).unwrap();
    let after = reports.last().unwrap().valid_loss.unwrap();
    assert_eq!(reports.last().unwrap().steps, 40);
    assert!(after < 0.5 * before, "held-out loss {before} -> {after}");
}

/// Runs the CLI; panics with its stderr when it fails.
fn localtune(args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_localtune"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "localtune {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn peft_loads_our_trained_adapter_and_gives_our_logits() {
    // An adapter trained here (train --task causal-lm on SmolLM2) loads with PeftModel.from_pretrained onto
    // transformers' de-quantised model of the same GGUF and gives the logits our `logits` prints, where the
    // reference tools are installed (.cache/ref-venv; a fresh CI machine has no torch).
    let Some(gguf) = llm_file() else { return };
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/ref-venv/bin/python");
    if !py.exists() {
        eprintln!("skipping the PEFT check: no {}", py.display());
        return;
    }
    let dir = std::env::temp_dir().join(format!("localtune-peft-causal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let q = "Is this review positive or negative? Answer with one word.\\n";
    let chats: String = [("Loved every minute.", "positive"), ("Cold food, rude staff.", "negative")]
        .iter()
        .cycle()
        .take(4)
        .map(|(t, a)| {
            format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"{q}{t}\"}}, {{\"role\": \"assistant\", \"content\": \"{a}\"}}]}}\n")
        })
        .collect();
    let data = dir.join("chats.jsonl");
    std::fs::write(&data, chats).unwrap();
    let adapter = dir.join("lora");
    let (g, d, a) = (gguf.to_str().unwrap(), data.to_str().unwrap(), adapter.to_str().unwrap());
    let train = ["train", "--task", "causal-lm", "--model", g, "--data", d, "--out", a, "--device", "cpu"];
    localtune(&[&train[..], &["--epochs", "1", "--batch", "4", "--lr", "1e-3"]].concat(), "");
    let prompt = format!("\"{q}The food was cold.\"\n");
    let logits = |extra: &[&str]| -> serde_json::Value {
        let args = [&["logits", "--model", g, "--top", "8", "--jsonl", "--device", "cpu"][..], extra].concat();
        serde_json::from_str(localtune(&args, &prompt).lines().next().unwrap()).unwrap()
    };
    let ours = logits(&["--adapter", a]);
    let base = logits(&[]);
    assert_ne!(ours["logits"], base["logits"], "the adapter changed nothing");
    let script = format!(
        "import json, os, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nfrom peft import PeftModel\n\
         d, f = os.path.split({g:?})\n\
         tok = AutoTokenizer.from_pretrained(d, gguf_file=f)\n\
         m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()\n\
         m = PeftModel.from_pretrained(m, {a:?}).eval()\n\
         ours = json.loads({ours:?})\n\
         ids = tok(json.loads({p:?})).input_ids\n\
         with torch.no_grad():\n    l = m(torch.tensor([ids])).logits[0, -1]\n\
         print(json.dumps({{'top': l.topk(8).indices.tolist(), 'max_abs_diff': max(abs(float(l[i]) - v) for i, v in zip(ours['ids'], ours['logits']))}}))\n",
        ours = ours.to_string(),
        p = prompt.trim(),
    );
    let r = std::process::Command::new(&py).args(["-c", &script]).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&r.stdout).trim().lines().last().unwrap()).unwrap();
    eprintln!("PEFT on our adapter: {v}");
    assert_eq!(v["top"], ours["ids"], "PEFT's top tokens");
    assert!(v["max_abs_diff"].as_f64().unwrap() <= 1e-3, "PEFT's logits on our adapter: {v}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs the CLI expecting it to fail; returns its stderr.
fn localtune_fails(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_localtune")).args(args).output().unwrap();
    assert!(!out.status.success(), "localtune {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_interrupted_causal_run_resumes_to_the_same_adapter_and_refuses_other_settings() {
    // A run with --save-every 1 leaves the checkpoint of its next-to-last step; resuming from it must
    // give the uninterrupted run's adapter byte for byte (same order, moments, schedule).
    let dir = std::env::temp_dir().join(format!("localtune-causal-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    localtune(&["tiny-llama", "--out", &p("tiny.gguf")], "");
    let chats: String = (0..6)
        .map(|i| {
            format!("{{\"prompt\": \"question {i}: is {i} even?\", \"completion\": \"{}\"}}\n", ["yes", "no"][i % 2])
        })
        .collect();
    std::fs::write(dir.join("chats.jsonl"), &chats).unwrap();
    std::fs::write(dir.join("other.jsonl"), chats.replace("even", "odd")).unwrap();
    let (m, d) = (p("tiny.gguf"), p("chats.jsonl"));
    let args = |out: &str, data: &str, lr: &str| -> Vec<String> {
        ["train", "--task", "causal-lm", "--model", &m, "--data", data, "--eval", data, "--out", out, "--device", "cpu"]
            .iter()
            .chain(&["--epochs", "2", "--batch", "4", "--lr", lr, "--warmup", "0.2", "--seed", "3"])
            .map(|s| s.to_string())
            .collect()
    };
    let run = |extra: &[&str], out: &str, data: &str| {
        let a = [args(out, data, "1e-2"), extra.iter().map(|s| s.to_string()).collect()].concat();
        localtune(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>(), "")
    };
    run(&["--save-every", "1"], &p("a"), &d);
    let ck = p("a/checkpoint");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("a/checkpoint/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["optimizer_step"], 3, "the checkpoint of step 3 of 4: {state}");
    run(&["--resume", &ck], &p("b"), &d);
    let weights = |n: &str| std::fs::read(dir.join(n).join("adapter_model.safetensors")).unwrap();
    assert!(weights("a") == weights("b"), "the resumed run's adapter differs from the uninterrupted one");
    assert!(weights("a") != weights("a/checkpoint"), "the checkpoint is the finished adapter");
    // Other settings or other data: refused, naming what differs.
    let fails = |extra: &[&str], data: &str, lr: &str| {
        let a =
            [args(&p("c"), data, lr), ["--resume", ck.as_str()].iter().chain(extra).map(|s| s.to_string()).collect()]
                .concat();
        localtune_fails(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    };
    let e = fails(&[], &d, "5e-3");
    assert!(e.contains("--lr 0.01 (asked: 0.005)"), "{e}");
    let e = fails(&["--r", "4"], &d, "1e-2");
    assert!(e.contains("--r 8 (asked: 4)"), "{e}");
    let e = fails(&[], &p("other.jsonl"), "1e-2");
    assert!(e.contains("other data"), "{e}");
    assert!(!dir.join("c").exists(), "a refused resume wrote its --out");
    std::fs::remove_dir_all(&dir).ok();
}
