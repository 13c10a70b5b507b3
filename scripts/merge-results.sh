#!/bin/bash
# The merging table of BENCHMARKS.md: LoRA adapters trained on yelp, amazon and imdb (70/10/20 splits
# of the UCI sentiment sentences, seeded), each merge method with its defaults and with the settings
# that did best on the validation splits, and one adapter trained on all three training splits.
# Usage: scripts/merge-results.sh WORKDIR   (takes about half an hour on 2 CPU cores; CPU device)
#        METHOD=full LR=1e-4 EPOCHS=2 scripts/merge-results.sh WORKDIR   (full fine-tunes instead of LoRA,
#        merged as task vectors of the base model)
set -euo pipefail
W=${1:?work folder}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
lt=${LT:-$ROOT/target/release/localtune}
DATA=${DATA:-$ROOT/.cache/data/sentiment}
mkdir -p "$W" && cd "$W"
export MATMUL_NUM_THREADS=${MATMUL_NUM_THREADS:-1}
METHOD=${METHOD:-lora} LR=${LR:-1e-3} EPOCHS=${EPOCHS:-3}
python3 - "$DATA" <<'PY'
import random, sys, json, os
all_train = []
for d in ['yelp', 'amazon', 'imdb']:
    rows = [l for l in open(f'{sys.argv[1]}/{d}.jsonl') if l.strip()]
    random.Random(7).shuffle(rows)
    n = len(rows)
    parts = {'train': rows[:int(.7 * n)], 'valid': rows[int(.7 * n):int(.8 * n)], 'test': rows[int(.8 * n):]}
    for k, v in parts.items():
        open(f'{d}-{k}.jsonl', 'w').writelines(v)
    all_train += parts['train']
random.Random(8).shuffle(all_train)
open('all-train.jsonl', 'w').writelines(all_train)
PY
for d in yelp amazon imdb all; do
  [ -f adapters/$d/adapter_model.safetensors ] && continue
  $lt train --data $d-train.jsonl --method $METHOD --out adapters/$d --device cpu --epochs $EPOCHS --lr $LR --batch 16 \
    --max-len 64 --valid-fraction 0.05 --seed 0 --json > train-$d.log 2>&1
done
evaluate() { # name adapter split
  for d in yelp amazon imdb; do
    acc=$($lt eval --adapter "$2" --data $d-$3.jsonl --device cpu --max-len 64 --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy"])')
    echo "{\"name\": \"$1\", \"split\": \"$3\", \"domain\": \"$d\", \"accuracy\": $acc}"
  done >> results.jsonl
}
: > results.jsonl
for d in yelp amazon imdb all; do evaluate "single:$d" adapters/$d test; done
ins="adapters/yelp adapters/amazon adapters/imdb"
merge() { # name args...
  local name=$1; shift
  local out=merged/$name
  $lt merge $ins --out $out --device cpu --rank 64 --json "$@" > merged-$name.json 2>/dev/null || { echo "merge $name failed" >&2; return; }
  evaluate "$name" $out valid
  evaluate "$name" $out test
}
merge linear --method linear
merge task-arithmetic --method task-arithmetic
for l in 0.5 0.7; do merge task-arithmetic@lambda=$l --method task-arithmetic --lambda $l; done
for m in ties dare-linear dare-ties magnitude-prune breadcrumbs della; do
  merge $m --method $m --density 0.5
  for d in 0.3 0.7; do merge $m@density=$d --method $m --density $d; done
done
merge model-stock --method model-stock
merge delta-guided --method delta-guided
merge delta-guided@T=0.5 --method delta-guided --temperature 0.5
merge delta-guided@T=2 --method delta-guided --temperature 2
for d in yelp amazon imdb; do
  $lt fisher --adapter adapters/$d --data $d-valid.jsonl --examples 100 --out fisher-$d.safetensors --device cpu 2>/dev/null
done
merge fisher --method fisher --fishers fisher-yelp.safetensors fisher-amazon.safetensors fisher-imdb.safetensors
for m in ties dare-ties; do merge $m-mergekit --method $m --density 0.5 --semantics mergekit; done
python3 - <<'PY'
import json, collections
rows = [json.loads(l) for l in open('results.jsonl')]
acc = collections.defaultdict(dict)
for r in rows:
    acc[(r['name'], r['split'])][r['domain']] = r['accuracy']
def mean(d): return sum(d.values()) / len(d)
fam = collections.defaultdict(list)
for (name, split) in acc:
    if split == 'valid':
        fam[name.split('@')[0]].append(name)
print('| adapter | yelp | amazon | imdb | mean |')
print('| --- | --- | --- | --- | --- |')
for d in ['yelp', 'amazon', 'imdb', 'all']:
    a = acc[(f'single:{d}', 'test')]
    label = 'multi-task (trained on all three)' if d == 'all' else f'single: {d}'
    print(f"| {label} | {a['yelp']:.3f} | {a['amazon']:.3f} | {a['imdb']:.3f} | {mean(a):.3f} |")
for f, names in fam.items():
    best = max(names, key=lambda n: mean(acc[(n, 'valid')]))
    for tag, n in [('defaults', f), ('best on validation', best)]:
        if (n, 'test') not in acc: continue
        a = acc[(n, 'test')]
        print(f"| {f} ({tag}: {n.split('@')[1] if '@' in n else 'defaults'}) | {a['yelp']:.3f} | {a['amazon']:.3f} | {a['imdb']:.3f} | {mean(a):.3f} |")
        if best == f: break
PY
