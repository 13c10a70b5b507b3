#!/bin/bash
# The QLoRA table of BENCHMARKS.md: SmolLM2-135M-Instruct (Q4_1 GGUF) asked "Is this review positive or
# negative? Answer with one word." about 200 held-out yelp, amazon and imdb reviews, zero-shot and after
# QLoRA on TRAIN yelp chats (scripts/make-sentiment-chats.py); the answer counts as the label it names
# first ("positive" / "negative", any case), an answer naming neither is wrong. Then the same run with
# PyTorch + PEFT on transformers' de-quantised model of the same file (scripts/qlora-peft.py), when
# .cache/ref-venv has them.
# Usage: scripts/qlora-results.sh WORKDIR   (about 40 minutes on 2 CPU cores; CPU device)
#        TRAIN=256 HELD=200 EPOCHS=1 BATCH=8 LR=1e-3 R=8 ALPHA=16 scripts/qlora-results.sh WORKDIR
set -euo pipefail
W=${1:?work folder}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
lt=${LT:-$ROOT/target/release/localtune}
M=${MODEL:-$ROOT/.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
TRAIN=${TRAIN:-256} HELD=${HELD:-200} EPOCHS=${EPOCHS:-1} BATCH=${BATCH:-8} LR=${LR:-1e-3} R=${R:-8} ALPHA=${ALPHA:-16}
mkdir -p "$W" && cd "$W"
"$ROOT/scripts/make-sentiment-chats.py" . "$TRAIN" "$HELD"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) threads; features: $(grep -o -w -E 'avx2|fma|avx512f|avx512bw|avx512vl' /proc/cpuinfo | sort -u | tr '\n' ' ')"
for d in yelp amazon imdb; do
  # The user turn of each held-out chat, one JSON string per line, and its label.
  python3 -c 'import json,sys
for l in open(sys.argv[1]):
    m = json.loads(l)["messages"]; print(json.dumps(m[0]["content"]))' "$d-eval.jsonl" > "$d-prompts.jsonl"
done
score() { # score LABELS_FROM ANSWERS
  python3 -c 'import json,sys
gold = [json.loads(l)["messages"][1]["content"] for l in open(sys.argv[1])]
said = []
for l in open(sys.argv[2]):
    t = json.loads(l)["text"].lower(); p, n = t.find("positive"), t.find("negative")
    said.append("neither" if p < 0 and n < 0 else "positive" if n < 0 or 0 <= p < n else "negative")
ok = sum(g == s for g, s in zip(gold, said))
print("%.3f (%d/%d, %d naming neither)" % (ok / len(gold), ok, len(gold), said.count("neither")))' "$1" "$2"
}
answers() { # answers TAG [--adapter DIR]
  local tag=$1; shift
  for d in yelp amazon imdb; do
    local t0=$(date +%s.%N)
    "$lt" generate --model "$M" --chat --greedy --max-new-tokens 4 --jsonl --device cpu "$@" < "$d-prompts.jsonl" > "$d-$tag.jsonl"
    echo "$tag $d accuracy: $(score "$d-eval.jsonl" "$d-$tag.jsonl")   ($(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$t0" "$(date +%s.%N)") s)"
  done
}
answers zero-shot
"$lt" train --task causal-lm --model "$M" --data train.jsonl --eval yelp-eval.jsonl --out lora --device cpu \
  --epochs "$EPOCHS" --batch "$BATCH" --lr "$LR" --r "$R" --alpha "$ALPHA" --max-len 256 --seed 0
answers qlora --adapter lora
# Generation speed: 64 new tokens after one chat prompt, sampled tokens counted.
echo '"Write a short poem about the sea."' > poem.jsonl
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
for dev in cpu gpu; do
  t0=$(date +%s.%N)
  n=$("$lt" generate --model "$M" --chat --greedy --max-new-tokens 64 --jsonl --device $dev < poem.jsonl | python3 -c 'import json,sys; print(len(json.loads(sys.stdin.readline())["ids"]))') || continue
  python3 -c "import sys; s = float(sys.argv[2]) - float(sys.argv[1]); print(f'generation on $dev: {sys.argv[3]} tokens in {s:.1f} s (with loading) = {int(sys.argv[3]) / s:.1f} tokens/s')" "$t0" "$(date +%s.%N)" "$n"
done
PY=$ROOT/.cache/ref-venv/bin/python
if [ -x "$PY" ]; then
  HF_HUB_OFFLINE=1 "$PY" "$ROOT/scripts/qlora-peft.py" "$M" . "$EPOCHS" "$BATCH" "$LR" "$R" "$ALPHA"
  for d in yelp amazon imdb; do echo "peft $d accuracy: $(score "$d-eval.jsonl" "$d-peft.jsonl")"; done
else
  echo "no $PY: the PyTorch + PEFT anchor is left out"
fi
