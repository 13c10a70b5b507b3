#!/usr/bin/env python3
"""The PyTorch + PEFT anchor of scripts/qlora-results.sh: LoRA with the same settings as
`localtune train --task causal-lm` (targets q,k,v,o,gate,up,down; AdamW without weight decay, linear
decay, clipping at 1; loss on the assistant's tokens and their end of turn only) on transformers'
de-quantised f32 model of the same GGUF file, then the held-out loss and greedy answers.

    qlora-peft.py MODEL.gguf WORKDIR EPOCHS BATCH LR R ALPHA

reads WORKDIR/{train,yelp-eval}.jsonl and {yelp,amazon,imdb}-prompts.jsonl, writes {d}-peft.jsonl."""
import json, os, random, sys, time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

path, work, epochs, batch, lr, r, alpha = sys.argv[1:8]
epochs, batch, lr, r, alpha = int(epochs), int(batch), float(lr), int(r), float(alpha)
torch.manual_seed(0)
torch.set_num_threads(os.cpu_count() or 1)
d, f = os.path.split(path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"))
end = tok.convert_tokens_to_ids("<|im_end|>")


def example(line):
    m = json.loads(line)["messages"]
    ids = tok.apply_chat_template(m, tokenize=True, return_dict=False)
    before = len(tok.apply_chat_template(m[:1], tokenize=True, add_generation_prompt=True, return_dict=False))
    stop = ids.index(end, before) + 1
    labels = [-100] * len(ids)
    labels[before:stop] = ids[before:stop]
    return ids, labels


def batches(rows):
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        n = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([x + [0] * (n - len(x)) for x, _ in chunk])
        labels = torch.tensor([y + [-100] * (n - len(y)) for _, y in chunk])
        mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x, _ in chunk])
        yield ids, labels, mask


def token_loss(ids, labels, mask):
    """The summed loss of the labelled tokens, and their count."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    tgt = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="sum")
    return loss, int((tgt != -100).sum())


def held_out_loss(rows):
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for b in batches(rows):
            l, k = token_loss(*b)
            total, n = total + float(l), n + k
    return total / n


train = [example(l) for l in open(os.path.join(work, "train.jsonl")) if l.strip()]
valid = [example(l) for l in open(os.path.join(work, "yelp-eval.jsonl")) if l.strip()]
steps = epochs * ((len(train) + batch - 1) // batch)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
sched = get_linear_schedule_with_warmup(opt, 0, steps)
print(f"peft: {sum(p.numel() for p in model.parameters() if p.requires_grad)} trainable values, {len(train)} chats, {torch.get_num_threads()} threads")
print(f"peft held-out loss before training: {held_out_loss(valid):.4f}")
rng = random.Random(0)
for epoch in range(1, epochs + 1):
    rng.shuffle(train)
    model.train()
    t0, seen, total, n = time.time(), 0, 0.0, 0
    for ids, labels, mask in batches(train):
        loss, k = token_loss(ids, labels, mask)
        (loss / k).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        seen += int(mask.sum())
        total, n = total + float(loss), n + k
    secs = time.time() - t0
    print(f"peft epoch {epoch}: train loss {total / n:.4f}, held-out loss {held_out_loss(valid):.4f}, {seen / secs:.0f} tokens/s")
model.eval()
for name in ["yelp", "amazon", "imdb"]:
    t0 = time.time()
    with open(os.path.join(work, f"{name}-peft.jsonl"), "w") as out:
        for line in open(os.path.join(work, f"{name}-prompts.jsonl")):
            ids = tok.apply_chat_template([{"role": "user", "content": json.loads(line)}], tokenize=True, add_generation_prompt=True, return_tensors="pt", return_dict=False)
            with torch.no_grad():
                g = model.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1] :]
            out.write(json.dumps({"ids": g.tolist(), "text": tok.decode(g, skip_special_tokens=True)}) + "\n")
    print(f"peft {name}: answers in {time.time() - t0:.0f} s")
