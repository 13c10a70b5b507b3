"""Makes tests/fixtures/bpe_json/ with the Hugging Face libraries themselves (transformers 5.24,
tokenizers 0.23): tokenizer.json folders and the ids their tokenizers give on a case set.

  smollm2/   transformers' own conversion of SmolLM2's GGUF tokenizer
             (AutoTokenizer.from_pretrained(dir, gguf_file=...).save_pretrained): tokenizer.json,
             tokenizer_config.json, chat_template.jinja
  digits/    a small byte-level BPE trained by `tokenizers` on the yelp reviews: Digits(individual)
             then ByteLevel, `<s> $A </s>` added by a TemplateProcessing post-processor
  prefix/    the same trained with ByteLevel(add_prefix_space=True) and RoBERTa's post-processor
  cases.json per folder: text → `tok(text).input_ids` of AutoTokenizer.from_pretrained(folder);
             for smollm2 also chats → apply_chat_template(add_generation_prompt=True) text and ids

Run: .cache/ref-venv/bin/python scripts/make-bpe-json-fixtures.py (after scripts/fetch-assets.sh).
Not run by the tests or CI."""
import json
import os

from tokenizers import Tokenizer, models, pre_tokenizers, processors, decoders, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

os.environ["HF_HUB_OFFLINE"] = "1"
OUT = "tests/fixtures/bpe_json"
meta = json.load(open("tests/fixtures/llama/meta.json"))
texts = [c["text"] for c in meta["tokenizer_cases"]] + [
    "Ünïcödé ÀÉÎ ñ ß ø",
    "日本語のテキスト、中文文本。한국어 텍스트",
    "🧑‍🚀 family 👨‍👩‍👧 flags 🇫🇷🇯🇵",
    "x=1;y=22;z=333 0.5e-10 ١٢٣",
    "  \n\n  trailing   ",
    "it's we're they'll I'd you've she's",
    "<|im_start|>embedded special<|im_end|> and <s> text",
    "mixed\tTABS\t\tand  spaces\u00a0nbsp",
    ("A long review: the food was great, the service slow (30 minutes!), prices fair. " * 25).strip(),
]

def cases(tok):
    return [{"text": t, "input_ids": tok(t).input_ids} for t in texts]

# SmolLM2 through transformers' GGUF conversion.
d = f"{OUT}/smollm2"
tok = AutoTokenizer.from_pretrained(".cache/models/smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
tok.save_pretrained(d)
tok = AutoTokenizer.from_pretrained(d)
chats = []
for msgs in [m["messages"] for m in meta["chats"]] + [[{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Hi 👋"}]]:
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    chats.append({"messages": msgs, "text": text, "input_ids": tok(text).input_ids})
json.dump({"cases": cases(tok), "chats": chats}, open(f"{d}/cases.json", "w"), ensure_ascii=False, indent=0)

# Two small trained byte-level BPEs for the pre-tokenizer and post-processor variants.
reviews = [json.loads(l)["text"] for l in open(".cache/data/sentiment/yelp.jsonl")]
for name, pre, post in [
    ("digits",
     pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
     processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B </s>",
                                   special_tokens=[("<s>", 0), ("</s>", 1)])),
    ("prefix", pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
     processors.RobertaProcessing(("</s>", 1), ("<s>", 0))),
]:
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(reviews, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    t.post_processor = post
    d = f"{OUT}/{name}"
    os.makedirs(d, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    json.dump({"cases": cases(tok)}, open(f"{d}/cases.json", "w"), ensure_ascii=False, indent=0)
print(sorted(os.listdir(OUT)))
