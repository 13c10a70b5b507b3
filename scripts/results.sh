#!/usr/bin/env bash
# The real-data result: every method trained on 800 yelp sentences (seeded split, the other 200 for
# validation), 3 epochs, batch 16, max-len 64, then evaluated on amazon and imdb (cross-domain).
# Prints a markdown table. Usage: scripts/results.sh [--device cpu|gpu] [--seed N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
device=cpu
seed=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
data="${LOCALTUNE_DATA:-$root/.cache/data/sentiment}"
bin=./target/release/localtune
cargo build --release -q
out=$(mktemp -d)
echo "| method | lr | trainable | valid acc (200 yelp) | amazon acc | imdb acc | mean cross-domain | train time |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for method in lora ia3 adapter adapter-pfeiffer parallel-adapter prefix mam bitfit head; do
  start=$(date +%s)
  log="$out/$method.log"
  case "$method" in
    adapter-pfeiffer) args=(--method adapter --adapter-placement pfeiffer) ;;
    *) args=(--method "$method") ;;
  esac
  $bin train --data "$data/yelp.jsonl" "${args[@]}" --out "$out/$method" --device "$device" \
    --epochs 3 --batch 16 --max-len 64 --seed "$seed" --r 8 --alpha 16 --targets query,value --json >"$log" 2>"$out/$method.err"
  secs=$(( $(date +%s) - start ))
  valid=$(tail -n 1 "$log" | python3 -c 'import json,sys; print("%.3f" % json.loads(sys.stdin.read())["valid_accuracy"])')
  amazon=$($bin eval --adapter "$out/$method" --data "$data/amazon.jsonl" --device "$device" --max-len 64 --json | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["accuracy"])')
  imdb=$($bin eval --adapter "$out/$method" --data "$data/imdb.jsonl" --device "$device" --max-len 64 --json | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["accuracy"])')
  mean=$(python3 -c "print('%.3f' % (($amazon + $imdb) / 2))")
  info=$(grep -m1 "trainable values" "$out/$method.err" | sed 's/.*: \([0-9]*\) trainable values.*/\1/')
  # the CLI's default learning rate per method
  case "$method" in ia3|prefix|head) lr=1e-2 ;; *) lr=1e-3 ;; esac
  echo "| $method | $lr | $info | $valid | $amazon | $imdb | $mean | ${secs} s |"
done
rm -rf "$out"
