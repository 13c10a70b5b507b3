#!/usr/bin/env python3
"""Chat JSONL for `train --task causal-lm` from the UCI sentiment data that scripts/fetch-assets.sh fetched:
"Is this review positive or negative? Answer with one word.\n<review>" → "positive" / "negative".

    scripts/make-sentiment-chats.py OUT_DIR [TRAIN] [HELD_OUT]

writes OUT_DIR/train.jsonl (TRAIN yelp reviews), OUT_DIR/yelp-eval.jsonl (the next HELD_OUT yelp reviews,
disjoint) and OUT_DIR/{amazon,imdb}-eval.jsonl (HELD_OUT each), shuffled with seed 0."""
import json, os, random, sys

root = os.path.join(os.path.dirname(__file__), "..", ".cache", "data", "sentiment")
QUESTION = "Is this review positive or negative? Answer with one word.\n"


def rows(name):
    with open(os.path.join(root, name + ".jsonl")) as f:
        r = [json.loads(line) for line in f if line.strip()]
    random.Random(0).shuffle(r)
    return r


def write(path, rs):
    with open(path, "w") as f:
        for r in rs:
            chat = [{"role": "user", "content": QUESTION + r["text"]}, {"role": "assistant", "content": r["label"]}]
            f.write(json.dumps({"messages": chat}) + "\n")


out = sys.argv[1]
train = int(sys.argv[2]) if len(sys.argv) > 2 else 64
held = int(sys.argv[3]) if len(sys.argv) > 3 else 200
os.makedirs(out, exist_ok=True)
yelp = rows("yelp")
write(os.path.join(out, "train.jsonl"), yelp[:train])
write(os.path.join(out, "yelp-eval.jsonl"), yelp[train : train + held])
for name in ["amazon", "imdb"]:
    write(os.path.join(out, name + "-eval.jsonl"), rows(name)[:held])
