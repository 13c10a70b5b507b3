//! Adapter files. Every method is saved as the two files of Hugging Face PEFT:
//!
//! - `adapter_config.json` — for LoRA and (IA)³ exactly PEFT's config (`peft_type` "LORA" / "IA3",
//!   `task_type` "SEQ_CLS", the classifier under `modules_to_save`), so `PeftModel.from_pretrained` loads
//!   them as they are; the other methods have no PEFT equivalent and carry their own `peft_type`
//!   ("LOCALTUNE_ADAPTER", "LOCALTUNE_PARALLEL_ADAPTER", "LOCALTUNE_PREFIX", "LOCALTUNE_BITFIT",
//!   "LOCALTUNE_HEAD") with the same layout;
//! - `adapter_model.safetensors` — the tensors under PEFT's keys (`base_model.model.…`, no adapter name),
//!   (IA)³ vectors shaped as PEFT stores them: (C, 1) for key/value, (1, F) for the FFN input;
//!
//! plus `localtune.json`, which PEFT ignores: the method's exact settings, the head and the label names.

use std::collections::HashMap;

use super::{Adapted, HeadKind, Ia3Config, LoraConfig, Method, Target};
use crate::error::{Error, Result};
use crate::model::arch::target_of_module_path;
use crate::model::weights::NamedTensors;
use crate::model::{Encoder, LayerDesc};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const META_FILE: &str = "localtune.json";

/// Everything an adapter folder holds, on the host.
#[derive(Debug, Clone)]
pub struct AdapterFiles {
    pub method: Method,
    pub head: HeadKind,
    pub labels: Vec<String>,
    /// The base model's name or folder, as recorded.
    pub base_model: String,
    /// The architecture the adapter was made for (`bert`, `distilbert`, …).
    pub arch: String,
    pub tensors: NamedTensors,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    #[serde(flatten)]
    method: Method,
    head: HeadKind,
    labels: Vec<String>,
    base_model: String,
    #[serde(default = "bert")]
    arch: String,
}

fn bert() -> String {
    "bert".into()
}

impl AdapterFiles {
    /// adapter_config.json for these files: PEFT's own for the methods PEFT has where PEFT would
    /// load them as they are (a BERT model with BertForSequenceClassification's pooler head), else
    /// the same layout with a `peft_type` of localtune's and a `localtune_method` entry.
    pub fn peft_config(&self, desc: &LayerDesc) -> serde_json::Value {
        let mut c = serde_json::json!({
            "base_model_name_or_path": self.base_model,
            "task_type": "SEQ_CLS",
            "inference_mode": true,
            "modules_to_save": ["classifier", "score"],
            "revision": null,
            "auto_mapping": null,
        });
        let m = c.as_object_mut().unwrap();
        let (peft_type, fields) = self.method.kind().peft_config(desc);
        let peft_loads = self.head == HeadKind::Pooler && desc.arch == "bert";
        match fields {
            Some(fields) => {
                m.extend(fields);
                let t = match (peft_loads, self.head) {
                    (true, _) => peft_type.to_string(),
                    // PEFT puts its classifier on BertForSequenceClassification's pooler: an adapter
                    // trained with the mean head would load there and predict wrongly.
                    (false, HeadKind::Mean) => format!("LOCALTUNE_{peft_type}_MEAN_HEAD"),
                    (false, HeadKind::Pooler) => format!("LOCALTUNE_{peft_type}"),
                };
                m.insert("peft_type".into(), t.into());
            }
            None => {
                m.insert("peft_type".into(), peft_type.into());
                m.insert("localtune_method".into(), serde_json::to_value(&self.method).unwrap());
            }
        }
        c
    }

    /// The three files' contents: (file name, bytes), for a model of layout `desc`.
    pub fn to_files(&self, desc: &LayerDesc) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let meta = Meta {
            format: 1,
            method: self.method.clone(),
            head: self.head,
            labels: self.labels.clone(),
            base_model: self.base_model.clone(),
            arch: self.arch.clone(),
        };
        let mut st_meta = HashMap::new();
        st_meta.insert("format".to_string(), "pt".to_string());
        Ok(vec![
            (CONFIG_FILE, serde_json::to_vec_pretty(&self.peft_config(desc)).unwrap()),
            (WEIGHTS_FILE, self.weights()?.to_bytes(Some(st_meta))?),
            (META_FILE, serde_json::to_vec_pretty(&meta).unwrap()),
        ])
    }

    /// Reads the files' contents; `meta_json` may be absent (an adapter made by PEFT itself).
    /// `origin` names the folder in errors.
    pub fn from_files(
        config_json: &str,
        safetensors: &[u8],
        meta_json: Option<&str>,
        origin: &str,
    ) -> Result<AdapterFiles> {
        let tensors = NamedTensors::from_bytes(safetensors, &format!("{origin}/{WEIGHTS_FILE}"))?;
        tensors.check_finite("the adapter")?;
        let cfg_origin = format!("{origin}/{CONFIG_FILE}");
        let config: serde_json::Value =
            serde_json::from_str(config_json).map_err(|e| Error::file(&cfg_origin, format!("not valid JSON: {e}")))?;
        if let Some(meta) = meta_json {
            let meta_origin = format!("{origin}/{META_FILE}");
            let m: Meta = serde_json::from_str(meta)
                .map_err(|e| Error::file(&meta_origin, format!("not a localtune adapter description: {e}")))?;
            config_agrees(&config, &m.method, m.head, &cfg_origin, &meta_origin)?;
            if let Method::Lora(l) = &m.method {
                lora_shapes_agree(&tensors, l.r, &meta_origin)?;
            }
            let (mut method, mut tensors) = (m.method, tensors);
            if let Some(c) = method.scalearn_mut() {
                c.unpack_sources(&mut tensors)?;
            }
            return Ok(AdapterFiles {
                method,
                head: m.head,
                labels: m.labels,
                base_model: m.base_model,
                arch: m.arch,
                tensors,
            });
        }
        // A PEFT adapter: the method from adapter_config.json, the LoRA targets from the tensors present.
        let peft_type = config.get("peft_type").and_then(|v| v.as_str()).unwrap_or("");
        let method = match peft_type {
            "LORA" => {
                let num = |k: &str| config.get(k).and_then(|v| v.as_f64());
                let r = num("r").ok_or_else(|| Error::file(&cfg_origin, "LORA config without `r`"))? as usize;
                let alpha = num("lora_alpha").unwrap_or(8.0) as f32;
                let mut targets: Vec<Target> = tensors
                    .tensors
                    .keys()
                    .filter_map(|k| k.strip_suffix(".lora_A.weight"))
                    .filter_map(target_of_module_path)
                    .collect();
                targets.sort_by_key(|t| t.index());
                targets.dedup();
                if targets.is_empty() {
                    return Err(Error::file(
                        format!("{origin}/{WEIGHTS_FILE}"),
                        "a LORA adapter without lora_A tensors",
                    ));
                }
                // PEFT scales by alpha / r from the config: a config whose r is not the tensors' rank
                // would be read with another scale.
                lora_shapes_agree(&tensors, r, &cfg_origin)?;
                let use_dora = config.get("use_dora").and_then(|v| v.as_bool()).unwrap_or(false);
                if use_dora {
                    return Err(Error::file(&cfg_origin, "DoRA adapters are not supported"));
                }
                for key in ["rank_pattern", "alpha_pattern"] {
                    if config.get(key).and_then(|v| v.as_object()).is_some_and(|o| !o.is_empty()) {
                        return Err(Error::file(
                            &cfg_origin,
                            format!("`{key}` (per-module ranks or alphas) is not supported"),
                        ));
                    }
                }
                if config.get("layers_to_transform").is_some_and(|v| !v.is_null()) {
                    return Err(Error::file(
                        &cfg_origin,
                        "`layers_to_transform` (LoRA on some layers only) is not supported",
                    ));
                }
                Method::Lora(LoraConfig {
                    r,
                    alpha,
                    rslora: config.get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false),
                    targets,
                    dropout: num("lora_dropout").unwrap_or(0.0) as f32,
                })
            }
            "IA3" => {
                // Ours scales keys, values and the FFN input. PEFT's default for BERT also scales the
                // attention output's input ("output.dense" matches both): not supported yet.
                if let Some(k) = tensors.tensors.keys().find(|k| k.ends_with("attention.output.dense.ia3_l")) {
                    return Err(Error::tensor(
                        format!("{origin}/{WEIGHTS_FILE}"),
                        k,
                        "(IA)³ on the attention output is not supported: localtune's (IA)³ scales keys, values and the FFN intermediate activation (PEFT target_modules key, value and layer.N.output.dense)",
                    ));
                }
                Method::Ia3(Ia3Config {})
            }
            other => {
                return Err(Error::file(
                    &cfg_origin,
                    format!("peft_type `{other}` is not supported without {META_FILE} (LORA and IA3 adapters are)"),
                ))
            }
        };
        let classes = tensors
            .tensors
            .get("base_model.model.classifier.weight")
            .and_then(|t| t.shape.first().copied())
            .ok_or_else(|| {
                Error::tensor(
                    format!("{origin}/{WEIGHTS_FILE}"),
                    "base_model.model.classifier.weight",
                    "missing: a SEQ_CLS adapter saves its classifier",
                )
            })?;
        let base_model = config.get("base_model_name_or_path").and_then(|v| v.as_str()).unwrap_or("").to_string();
        Ok(AdapterFiles {
            method,
            head: HeadKind::Pooler,
            labels: (0..classes).map(|i| i.to_string()).collect(),
            base_model,
            arch: crate::model::arch::arch_of_peft_keys(tensors.tensors.keys().map(|k| k.as_str())).to_string(),
            tensors,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &std::path::Path) -> Result<AdapterFiles> {
        let dir = &readable_folder(dir);
        let read = |name: &str| -> Result<Vec<u8>> {
            std::fs::read(dir.join(name)).map_err(|e| Error::file(dir.join(name), e))
        };
        let config =
            String::from_utf8(read(CONFIG_FILE)?).map_err(|_| Error::file(dir.join(CONFIG_FILE), "not UTF-8"))?;
        let weights = read(WEIGHTS_FILE)?;
        let meta = match std::fs::read_to_string(dir.join(META_FILE)) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::file(dir.join(META_FILE), e)),
        };
        Self::from_files(&config, &weights, meta.as_deref(), &dir.display().to_string())
    }

    /// Writes the files into `dir` as one set (`write_folder_atomic`): an interrupted save leaves the
    /// previous adapter whole, never a new config beside old weights.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, dir: &std::path::Path, desc: &LayerDesc) -> Result<()> {
        write_folder_atomic(dir, &self.to_files(desc)?)
    }

    /// Trainable parameters on `base`'s device from these tensors; every tensor must be present with
    /// the shape the method implies, and nothing else.
    pub fn to_adapted(&self, base: &Encoder) -> Result<Adapted> {
        if self.arch != base.desc.arch {
            return Err(Error::file(
                &self.tensors.origin,
                format!("this adapter was made for a {} model, not {}", self.arch, base.desc.arch),
            ));
        }
        let mut a = Adapted::init(base, &self.method, self.labels.len(), 0)?;
        let mut tensors = self.tensors.clone();
        a.params.load_from(&mut tensors)?;
        if let Some(extra) = tensors.tensors.keys().next() {
            return Err(Error::tensor(
                &tensors.origin,
                extra,
                format!("unexpected for a {} adapter of this model", self.method.name()),
            ));
        }
        Ok(a)
    }

    /// Reads trainable parameters back to the host as adapter files.
    pub async fn from_adapted(
        a: &Adapted,
        base: &Encoder,
        head: HeadKind,
        labels: &[String],
        base_model: &str,
    ) -> Result<AdapterFiles> {
        Ok(AdapterFiles {
            method: a.method.clone(),
            head,
            labels: labels.to_vec(),
            base_model: base_model.to_string(),
            arch: base.desc.arch.to_string(),
            tensors: a.params.to_host(WEIGHTS_FILE).await?,
        })
    }

    /// The tensors of the weights file: the trainable ones, and a ScaLearn adapter's sources.
    fn weights(&self) -> Result<NamedTensors> {
        match self.method.scalearn() {
            Some(c) => {
                let mut all = self.tensors.clone();
                c.pack_sources(&mut all)?;
                Ok(all)
            }
            None => Ok(self.tensors.clone()),
        }
    }
}

/// Refuses LoRA tensors that are not (r, in) for A and (out, r) for B with the rank `r` the file
/// `says` gives: PEFT and localtune would read them with another scale, or not at all.
fn lora_shapes_agree(tensors: &NamedTensors, r: usize, says: &str) -> Result<()> {
    for (k, t) in &tensors.tensors {
        let rank = if k.ends_with(".lora_A.weight") {
            t.shape.first()
        } else if k.ends_with(".lora_B.weight") {
            t.shape.get(1)
        } else {
            continue;
        };
        if t.shape.len() != 2 || rank != Some(&r) {
            return Err(Error::tensor(
                &tensors.origin,
                k,
                format!("has shape {:?}, not of rank {r} as {says} says: the files disagree", t.shape),
            ));
        }
    }
    Ok(())
}

/// Refuses an adapter_config.json that says otherwise than localtune.json about the method or the
/// head: PEFT reads the one, localtune the other, and they would compute different models from one
/// folder.
fn config_agrees(
    config: &serde_json::Value,
    method: &Method,
    head: HeadKind,
    cfg_origin: &str,
    meta_origin: &str,
) -> Result<()> {
    let peft_type = config.get("peft_type").and_then(|v| v.as_str()).unwrap_or("");
    let base = peft_type.trim_start_matches("LOCALTUNE_").trim_end_matches("_MEAN_HEAD");
    let mut differ: Vec<String> = vec![];
    let field = |key: &str, ours: serde_json::Value| {
        let theirs = config.get(key).cloned().unwrap_or(serde_json::Value::Null);
        let same = match (theirs.as_f64(), ours.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            _ => theirs == ours,
        };
        (!same).then(|| format!("`{key}` {theirs} where {meta_origin} has {ours}"))
    };
    match method {
        Method::Lora(l) => {
            if base != "LORA" {
                differ.push(format!("`peft_type` {peft_type:?} where {meta_origin} has method lora"));
            }
            differ.extend(field("r", l.r.into()));
            differ.extend(field("lora_alpha", l.alpha.into()));
            differ.extend(field("use_rslora", l.rslora.into()));
        }
        Method::Ia3(_) => {
            if base != "IA3" {
                differ.push(format!("`peft_type` {peft_type:?} where {meta_origin} has method ia3"));
            }
        }
        m => {
            // localtune's own methods carry the whole method in the config; read as a method, so
            // options added since (with their defaults) compare equal.
            let theirs = config.get("localtune_method").cloned().unwrap_or_default();
            if serde_json::from_value::<Method>(theirs.clone()).ok().as_ref() != Some(m) {
                let ours = serde_json::to_value(m).unwrap();
                differ.push(format!("`localtune_method` {theirs} where {meta_origin} has {ours}"));
            }
            if !peft_type.starts_with("LOCALTUNE_") {
                differ.push(format!("`peft_type` {peft_type:?} where {meta_origin} has method {}", m.name()));
            }
        }
    }
    // The mean head is marked in peft_type, so that PEFT does not load it on the pooler.
    let mean_marked = peft_type.ends_with("_MEAN_HEAD");
    if matches!(method, Method::Lora(_) | Method::Ia3(_)) && mean_marked != (head == HeadKind::Mean) {
        differ.push(format!("`peft_type` {peft_type:?} where {meta_origin} has the {head:?} head"));
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(Error::file(
            cfg_origin,
            format!(
                "disagrees with {meta_origin}: {}. PEFT reads the one and localtune the other, so they would compute different models: save the adapter again",
                differ.join("; ")
            ),
        ))
    }
}

/// Writes a folder of `files` so that a reader sees the old set or the new set, never a mix: the new
/// files go into `DIR.tmp-PID` (each synced), then `DIR` becomes `DIR.old`, the new folder becomes
/// `DIR`, whatever else the old folder held (a `checkpoint/` inside, a README) moves across, and
/// `DIR.old` goes. A crash or a full disk before the swap leaves the old folder as it was; a crash
/// between the two renames leaves `DIR.old` complete, which `readable_folder` falls back to.
///
/// Weights that are not finite are never written: the save is refused, naming the tensor, and the
/// folder keeps what it held (a diverged run's last checkpoint stays the last good one).
#[cfg(not(target_arch = "wasm32"))]
pub fn write_folder_atomic<S: AsRef<str>, B: AsRef<[u8]>>(dir: &std::path::Path, files: &[(S, B)]) -> Result<()> {
    for (n, bytes) in files {
        let n = n.as_ref();
        if n.ends_with(".safetensors") {
            let origin = dir.join(n).display().to_string();
            crate::model::weights::check_finite_to_save(bytes.as_ref(), &origin)?;
        }
    }
    let (tmp, old) = (sibling(dir, &format!("tmp-{}", std::process::id())), sibling(dir, "old"));
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::file(parent, e))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    let write = || -> Result<()> {
        for (n, bytes) in files {
            write_atomic(&tmp.join(n.as_ref()), bytes.as_ref())?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.is_file() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::file(dir, "is a file, not a folder to write into"));
    }
    if dir.exists() {
        // A previous swap cut short left DIR.old beside a complete DIR: DIR is the newer one.
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| Error::file(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::file(dir, e))?;
    if old.exists() {
        let ours: std::collections::HashSet<&str> = files.iter().map(|(n, _)| n.as_ref()).collect();
        for entry in std::fs::read_dir(&old).map_err(|e| Error::file(&old, e))?.flatten() {
            let n = entry.file_name();
            if !ours.contains(n.to_string_lossy().as_ref()) {
                std::fs::rename(entry.path(), dir.join(&n)).map_err(|e| Error::file(entry.path(), e))?;
            }
        }
        std::fs::remove_dir_all(&old).map_err(|e| Error::file(&old, e))?;
    }
    Ok(())
}

/// `DIR.suffix` beside `dir`: the temporary, old and lock names of an output folder.
#[cfg(not(target_arch = "wasm32"))]
fn sibling(dir: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// The folder to read for `dir`: `dir` itself, or `DIR.old` when only that is left by a save that was
/// cut short between its two renames (said on stderr).
#[cfg(not(target_arch = "wasm32"))]
pub fn readable_folder(dir: &std::path::Path) -> std::path::PathBuf {
    if dir.exists() {
        return dir.to_path_buf();
    }
    let old = sibling(dir, "old");
    if old.is_dir() {
        eprintln!(
            "{} is missing; reading {} (left complete by a save that was cut short)",
            dir.display(),
            old.display()
        );
        return old;
    }
    dir.to_path_buf()
}

/// A claim on an output folder for one run: the file `DIR.lock` beside it, holding the run's pid,
/// made with create-new so that a second run into the same folder is refused instead of overwriting
/// the first one's work. A lock whose process is gone (a killed run) is taken over. Dropped, it goes.
#[cfg(not(target_arch = "wasm32"))]
pub struct OutputLock {
    path: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl OutputLock {
    pub fn take(dir: &std::path::Path) -> Result<OutputLock> {
        use std::io::Write;
        let path = sibling(dir, "lock");
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::file(parent, e))?;
        }
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(std::process::id().to_string().as_bytes()).map_err(|e| Error::file(&path, e))?;
                    return Ok(OutputLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid: Option<u32> = holder.trim().parse().ok();
                    let alive = match pid {
                        Some(p) if cfg!(target_os = "linux") => std::path::Path::new(&format!("/proc/{p}")).exists(),
                        Some(_) => true,
                        // No pid yet: being written this instant by its holder, unless it has stayed
                        // empty for a while (a run killed between creating it and writing its pid).
                        None => std::fs::metadata(&path)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .is_none_or(|age| age < std::time::Duration::from_secs(10)),
                    };
                    if alive {
                        return Err(Error::file(
                            dir,
                            format!(
                                "is being written by another localtune run (pid {}; lock {}): wait for it to \
                                 end or pick another --out",
                                pid.map_or("?".into(), |p| p.to_string()),
                                path.display()
                            ),
                        ));
                    }
                    // Its run is gone: take the lock over.
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(Error::file(&path, e)),
            }
        }
        Err(Error::file(&path, "could not be taken"))
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    // Errors name the file being written, not its temporary name.
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::file(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}
