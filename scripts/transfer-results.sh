#!/bin/bash
# The multi-source transfer table of BENCHMARKS.md. Per domain of the UCI sentiment sentences (yelp,
# amazon, imdb; 1000 each): a pool of 800 for training and 200 held out for testing (seeded). Sources:
# a Pfeiffer bottleneck adapter and a LoRA per domain, trained on its whole pool. For each target
# domain, labelled sizes N and seeds: N labelled examples drawn from the target's pool (seeded), the
# other two domains as sources, and every method below trained on those N (the distillations also
# on the pool's other texts, unlabelled); accuracy on the target's 200 test sentences. The transfer
# scores of each source on the N labelled examples are recorded too, for Kendall's tau against the
# accuracy the source's probe reached.
# Usage: scripts/transfer-results.sh WORKDIR [PLAN]   PLAN: lines "target n seed" (default: below)
# Then: python3 scripts/transfer-table.py WORKDIR/results.jsonl
set -euo pipefail
W=${1:?work folder}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
lt=${LT:-$ROOT/target/release/localtune}
DATA=${DATA:-$ROOT/.cache/data/sentiment}
mkdir -p "$W" && cd "$W"
export MATMUL_NUM_THREADS=${MATMUL_NUM_THREADS:-2}
common=(--device cpu --max-len 64 --batch 16 --valid-fraction 0)
python3 - "$DATA" <<'PY'
import random, sys
for d in ['yelp', 'amazon', 'imdb']:
    rows = [l for l in open(f'{sys.argv[1]}/{d}.jsonl') if l.strip()]
    random.Random(7).shuffle(rows)
    open(f'{d}-pool.jsonl', 'w').writelines(rows[:800])
    open(f'{d}-test.jsonl', 'w').writelines(rows[800:])
PY
for d in yelp amazon imdb; do
  [ -f src/$d-adapter/adapter_model.safetensors ] || $lt train --data $d-pool.jsonl --method adapter \
    --adapter-placement pfeiffer --out src/$d-adapter --epochs 3 --lr 3e-3 "${common[@]}" --seed 0 > src-$d-adapter.log 2>&1
  [ -f src/$d-lora/adapter_model.safetensors ] || $lt train --data $d-pool.jsonl --method lora \
    --out src/$d-lora --epochs 3 --lr 3e-3 "${common[@]}" --seed 0 > src-$d-lora.log 2>&1
done
acc() { # adapter target -> accuracy on the target's test sentences
  $lt eval --adapter "$1" --data "$2-test.jsonl" --device cpu --max-len 64 --json 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy"])'
}
record() { # target n seed method trainable accuracy
  echo "{\"target\": \"$1\", \"n\": $2, \"seed\": $3, \"method\": \"$4\", \"trainable\": $5, \"accuracy\": $6}" >> results.jsonl
}
trainable() { grep -o '[0-9]* trainable values' "$1" | head -1 | cut -d' ' -f1; }
plan=${2:-}
if [ -z "$plan" ]; then
  plan=$(printf '%s\n' "amazon 32 0" "amazon 100 0" "amazon 800 0" "yelp 32 0" "yelp 100 0" "imdb 32 0" "imdb 100 0" \
    "amazon 32 1" "amazon 100 1" "amazon 32 2" "amazon 100 2" "yelp 32 1" "imdb 32 1" "yelp 32 2" "imdb 32 2" \
    "yelp 100 1" "imdb 100 1" "yelp 100 2" "imdb 100 2")
fi
touch results.jsonl
echo "$plan" | while read -r t n seed; do
  [ -z "$t" ] && continue
  grep -q "\"target\": \"$t\", \"n\": $n, \"seed\": $seed, \"method\": \"distill-weighted\"" results.jsonl && continue
  others=$(for d in yelp amazon imdb; do if [ $d != $t ]; then echo $d; fi; done | xargs)
  set -- $others; o1=$1; o2=$2
  R=run/$t-$n-$seed; mkdir -p $R
  python3 - $t $n $seed $R <<'PY'
import random, sys, json
t, n, seed, R = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = open(f'{t}-pool.jsonl').readlines()
random.Random(1000 + seed).shuffle(rows)
open(f'{R}/labelled.jsonl', 'w').writelines(rows[:n])
open(f'{R}/unlabelled.txt', 'w').writelines(json.loads(r)['text'].replace('\n', ' ') + '\n' for r in rows[n:])
PY
  case $n in 32) ep=10;; 100) ep=6;; *) ep=2;; esac
  L=$R/labelled.jsonl
  run() { # name log args...
    local name=$1; shift
    if $lt train --data $L --out $R/$name "${common[@]}" --epochs $ep --seed $seed "$@" > $R/$name.log 2>&1; then
      record $t $n $seed $name "$(trainable $R/$name.log)" "$(acc $R/$name $t)"
    else
      echo "$t $n $seed $name failed: $(tail -1 $R/$name.log)" >&2
    fi
  }
  run lora --method lora --lr 3e-3
  run adapter --method adapter --adapter-placement pfeiffer --lr 3e-3
  for m in scalearn scalearn-uniform scalearn++ scalearn-uniform++; do
    run $m --method $m --sources src/$o1-adapter src/$o2-adapter $R/adapter
  done
  run scalearn-sources-only --method scalearn --sources src/$o1-adapter src/$o2-adapter
  for o in $o1 $o2; do run probe-$o --method scalearn-uniform++ --sources src/$o-adapter; done
  [ -f $R/merged/adapter_model.safetensors ] || $lt merge src/$o1-lora src/$o2-lora --method task-arithmetic --lambda 0.5 \
    --out $R/merged --device cpu > $R/merge.log 2>&1
  run merge-probe --method scalearn-uniform++ --sources $R/merged
  $lt rank-sources --sources src/$o1-adapter src/$o2-adapter --data $L --device cpu --max-len 64 --json \
    > $R/rank.json 2>/dev/null
  python3 - $t $n $seed $R/rank.json >> results.jsonl <<'PY'
import json, sys
r = json.load(open(sys.argv[4]))
for s in r['sources']:
    src = s['source'].split('/')[-1].replace('-adapter', '')
    print(json.dumps({'target': sys.argv[1], 'n': int(sys.argv[2]), 'seed': int(sys.argv[3]), 'method': 'scores',
                      'source': src, 'logme': s['logme'], 'leep': s['leep'], 'nce': s['nce']}))
PY
  unl=(); [ -s $R/unlabelled.txt ] && unl=(--unlabelled $R/unlabelled.txt)
  for w in nearest weighted; do
    if $lt distill --data $L "${unl[@]}" --sources src/$o1-adapter src/$o2-adapter --weighting $w \
      --method lora --lr 3e-3 --out $R/distill-$w "${common[@]}" --epochs 2 --seed $seed > $R/distill-$w.log 2>&1; then
      record $t $n $seed distill-$w "$(trainable $R/distill-$w.log)" "$(acc $R/distill-$w $t)"
    else
      echo "$t $n $seed distill-$w failed: $(tail -1 $R/distill-$w.log)" >&2
    fi
  done
  echo "done $t $n $seed at $(date +%T)" >&2
done
