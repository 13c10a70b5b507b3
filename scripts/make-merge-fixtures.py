"""Reference merges made by mergekit itself on tiny BERT models, for tests/merge_recipes.rs.

Run by scripts/make-merge-fixtures.sh inside the reference venv (torch, transformers, mergekit 0.1.4).
Writes tests/fixtures/mergekit/: models/{base,a,b,c}/ (config.json + model.safetensors), one recipe
per case (*.yml, model paths relative to the recipe), and expected/<case>.safetensors, the output
mergekit wrote for that recipe. Only deterministic methods (no random drops).
"""
import json, os, shutil, sys, tempfile
import torch, yaml
from transformers import BertConfig, BertModel
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
import mergekit
import mergekit.architecture.base as _arch_base

# mergekit 0.1.4 names torch only under TYPE_CHECKING in architecture/base.py; pydantic 2.10 then
# cannot build ConfiguredModuleArchitecture. Give it the name and rebuild.
_arch_base.torch = torch
for _cls in vars(_arch_base).values():
    if isinstance(_cls, type) and hasattr(_cls, "model_rebuild"):
        try:
            _cls.model_rebuild(force=True)
        except Exception:
            pass

out = sys.argv[1]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(f"{out}/models")
os.makedirs(f"{out}/expected")
torch.manual_seed(1234)
cfg = BertConfig(vocab_size=101, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
                 max_position_embeddings=32, type_vocab_size=2)
base = BertModel(cfg, add_pooling_layer=True)
shared = {k: torch.randn_like(v) for k, v in base.state_dict().items() if v.dtype == torch.float32}
for name, scale in [("base", 0.0), ("a", 0.05), ("b", 0.07), ("c", 0.04)]:
    m = BertModel(cfg, add_pooling_layer=True)
    sd = {}
    for k, v in base.state_dict().items():
        if v.dtype != torch.float32:
            continue
        sd[k] = (v + scale * (0.5 * shared[k] + torch.randn_like(v))).contiguous() if scale else v.clone()
    m.load_state_dict(sd, strict=False)
    m.save_pretrained(f"{out}/models/{name}", safe_serialization=True)

cases = {
    "linear": {"merge_method": "linear", "models": [
        {"model": "a", "parameters": {"weight": 1.0}},
        {"model": "b", "parameters": {"weight": [0.2, 1.0]}},
        {"model": "c", "parameters": {"weight": [{"filter": "attention", "value": 2.0}, {"value": 0.5}]}}]},
    "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": "base", "models": [
        {"model": "a", "parameters": {"weight": 0.6}}, {"model": "b", "parameters": {"weight": 0.4}}],
        "parameters": {"lambda": 1.5}},
    "ties": {"merge_method": "ties", "base_model": "base", "models": [
        {"model": "a", "parameters": {"weight": 0.7, "density": [0.3, 0.7]}},
        {"model": "b", "parameters": {"weight": -0.4, "density": 0.5}},
        {"model": "c", "parameters": {"weight": 0.5, "density": [{"filter": "intermediate", "value": 0.2}, {"value": 0.6}]}}]},
    "ties_no_normalize": {"merge_method": "ties", "base_model": "base", "models": [
        {"model": "a", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "b", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "c", "parameters": {"weight": 1.0, "density": 0.5}}],
        "parameters": {"normalize": False, "lambda": 0.8}},
    "breadcrumbs": {"merge_method": "breadcrumbs", "base_model": "base", "models": [
        {"model": "a", "parameters": {"weight": 0.5, "density": 0.6, "gamma": 0.1}},
        {"model": "b", "parameters": {"weight": 0.5, "density": 0.6, "gamma": 0.1}}]},
    "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "base_model": "base", "models": [
        {"model": "a", "parameters": {"weight": 0.5, "density": 0.5, "gamma": 0.1}},
        {"model": "b", "parameters": {"weight": 0.3, "density": 0.5, "gamma": 0.1}},
        {"model": "c", "parameters": {"weight": 0.2, "density": 0.5, "gamma": 0.1}}]},
    "slerp": {"merge_method": "slerp", "base_model": "base", "models": [{"model": "base"}, {"model": "a"}],
        "parameters": {"t": [{"filter": "attention", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]}},
    "model_stock": {"merge_method": "model_stock", "base_model": "base", "models": [
        {"model": "a"}, {"model": "b"}, {"model": "c"}]},
}
case_meta = {}
for name, recipe in cases.items():
    recipe = json.loads(json.dumps(dict(recipe, dtype="float32")))
    if "base_model" in recipe:
        recipe["base_model"] = f"models/{recipe['base_model']}"
    for m in recipe["models"]:
        m["model"] = f"models/{m['model']}"
    with open(f"{out}/{name}.yml", "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    # mergekit wants absolute paths.
    absr = json.loads(json.dumps(recipe))
    if "base_model" in absr:
        absr["base_model"] = os.path.abspath(f"{out}/{absr['base_model']}")
    for m in absr["models"]:
        m["model"] = os.path.abspath(f"{out}/{m['model']}")
    with tempfile.TemporaryDirectory() as tmp:
        run_merge(MergeConfiguration.model_validate(absr), out_path=tmp,
                  options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False, low_cpu_memory=False, cuda=False))
        files = [f for f in os.listdir(tmp) if f.endswith(".safetensors")]
        assert len(files) == 1, files
        shutil.copy(f"{tmp}/{files[0]}", f"{out}/expected/{name}.safetensors")
    case_meta[name] = {"recipe": f"{name}.yml"}
json.dump({"mergekit": getattr(mergekit, "__version__", "0.1.4"), "torch": torch.__version__, "cases": case_meta,
           "note": "models/*: tiny BertModel (hidden 16, 3 layers) and three variants base + s(0.5 shared + noise); "
                   "expected/*: what mergekit's run_merge wrote for each recipe (paths made absolute)"},
          open(f"{out}/meta.json", "w"), indent=1)
print("ok", list(cases))
