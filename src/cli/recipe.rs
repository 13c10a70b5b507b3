//! `localtune merge --recipe FILE`: a mergekit recipe (its YAML, or the same as JSON) run with
//! mergekit's semantics: `merge_method`, `base_model`, `models` (each `model` with `parameters`),
//! global `parameters`, `dtype` / `out_dtype`. Model paths are local folders, relative to the recipe.

use super::merge::{layers_of, merge_model_folders, MergeArgs};
use super::open_device;
use localtune::merge::folder::Recipe;
use localtune::merge::params::Setting;
use localtune::merge::{Method, Semantics};
use localtune::{Error, Result};
use std::path::{Path, PathBuf};

pub fn run(file: &Path, a: &MergeArgs) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::file(file, e))?;
    let v: serde_json::Value = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| Error::file(file, format!("not JSON: {e}")))?
    } else {
        serde_yaml::from_str(&text).map_err(|e| Error::file(file, format!("not a YAML recipe: {e}")))?
    };
    let what = file.display().to_string();
    let dir = file.parent().unwrap_or(Path::new("."));
    let path_of = |s: &serde_json::Value, field: &str| -> Result<PathBuf> {
        let s = s.as_str().ok_or_else(|| Error::file(file, format!("`{field}` must be a path")))?;
        let p = Path::new(s);
        let p = if p.is_absolute() { p.to_path_buf() } else { dir.join(p) };
        if !p.join("model.safetensors").exists() {
            return Err(Error::file(
                &p,
                format!("{field}: not a model folder with model.safetensors (recipes name local folders)"),
            ));
        }
        Ok(p)
    };
    for key in ["slices", "modules"] {
        if v.get(key).is_some() {
            return Err(Error::file(file, format!("`{key}` recipes are not supported; use `models`")));
        }
    }
    let method = Method::parse(
        v.get("merge_method").and_then(|m| m.as_str()).ok_or_else(|| Error::file(file, "no `merge_method`"))?,
    )?;
    let base = v.get("base_model").map(|b| path_of(b, "base_model")).transpose()?;
    let models = v.get("models").and_then(|m| m.as_array()).ok_or_else(|| Error::file(file, "no `models` list"))?;
    let mut inputs = Vec::new();
    let mut params = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let p = path_of(m.get("model").unwrap_or(m), &format!("models[{i}].model"))?;
        // The base model listed among the models is the base, not an input (as mergekit does for
        // its task-vector methods, SLERP and model stock).
        if method.needs_base() && base.as_ref().is_some_and(|b| same(b, &p)) {
            continue;
        }
        let mut ps = std::collections::BTreeMap::new();
        if let Some(obj) = m.get("parameters").and_then(|p| p.as_object()) {
            for (k, val) in obj {
                ps.insert(k.clone(), Setting::from_json(val, &format!("{what}: models[{i}].parameters.{k}"))?);
            }
        }
        inputs.push(p);
        params.push(ps);
    }
    let mut recipe = Recipe::new(method, inputs.len(), Semantics::Mergekit);
    recipe.models = params;
    recipe.seed = a.seed;
    recipe.layers = layers_of(base.as_ref().unwrap_or(&inputs[0]));
    if let Some(obj) = v.get("parameters").and_then(|p| p.as_object()) {
        for (k, val) in obj {
            recipe.global.insert(k.clone(), Setting::from_json(val, &format!("{what}: parameters.{k}"))?);
        }
    }
    recipe.check_names()?;
    let dtype_s = v.get("out_dtype").or(v.get("dtype")).and_then(|d| d.as_str()).unwrap_or("float32");
    let dtype = match dtype_s.trim_start_matches("torch.") {
        "float32" => safetensors::Dtype::F32,
        "float16" => safetensors::Dtype::F16,
        "bfloat16" => safetensors::Dtype::BF16,
        d => return Err(Error::file(file, format!("dtype {d}: one of float32, float16, bfloat16"))),
    };
    let dev = open_device(a.device)?;
    let start = std::time::Instant::now();
    let report = merge_model_folders(&recipe, &dev, base.as_deref(), &inputs, &a.fishers, &[], &a.out, dtype, a.json)?;
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"method": method.name(), "recipe": what, "out": a.out.display().to_string(), "tensors": report.tensors, "seconds": secs})
        );
    } else {
        eprintln!(
            "{what}: {} merge of {} models written to {} in {secs:.1} s",
            method.name(),
            inputs.len(),
            a.out.display()
        );
    }
    Ok(())
}

fn same(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
