"""Markdown tables from scripts/transfer-results.sh's results.jsonl: accuracy (mean ± sample standard
deviation over the seeds run, and how many) per target domain, labelled size and method, with the
values each method trains; then how well each transfer score ranked the sources: Kendall's tau between
the score and the accuracy of the source's probe (a new head over the frozen source), per task (target,
size, seed), averaged. Usage: python3 scripts/transfer-table.py results.jsonl"""
import json
import statistics as st
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# A run repeated (an interrupted plan restarted) counts once: its last record.
rows = list({(r['target'], r['n'], r['seed'], r['method'], r.get('source')): r for r in rows}.values())
acc = defaultdict(list)
trainable = {}
scores = defaultdict(dict)
for r in rows:
    key = (r['target'], r['n'])
    if r['method'] == 'scores':
        scores[(r['target'], r['n'], r['seed'])][r['source']] = r
        continue
    acc[key + (r['method'],)].append(r['accuracy'])
    trainable[r['method']] = r['trainable']

ORDER = ['lora', 'adapter', 'scalearn', 'scalearn-uniform', 'scalearn++', 'scalearn-uniform++', 'scalearn-sources-only',
         'merge-probe', 'probe', 'distill-nearest', 'distill-weighted']
NAMES = {
    'lora': 'LoRA (r 8, q,v) on the labels',
    'adapter': 'Pfeiffer adapter on the labels (also the target\'s own source)',
    'scalearn': 'ScaLearn (2 sources + own adapter)',
    'scalearn-uniform': 'ScaLearnUniform (2 + own)',
    'scalearn++': 'ScaLearn++ (2 + own)',
    'scalearn-uniform++': 'ScaLearnUniform++ (2 + own)',
    'scalearn-sources-only': 'ScaLearn (the 2 sources only)',
    'merge-probe': 'task-arithmetic merge of the 2 LoRA sources (λ 0.5) + new head',
    'distill-nearest': 'DistillNearest (LoRA student, + unlabelled pool)',
    'distill-weighted': 'DistillWeighted (LoRA student, + unlabelled pool)',
}


def fmt(v):
    if not v:
        return '–'
    if len(v) == 1:
        return f'{v[0]:.3f} (1)'
    return f'{st.mean(v):.3f} ± {st.stdev(v):.3f} ({len(v)})'


targets = [t for t in ['amazon', 'yelp', 'imdb'] if any(k[0] == t for k in acc)]
for t in targets:
    sizes = sorted({k[1] for k in acc if k[0] == t})
    others = [d for d in ['yelp', 'amazon', 'imdb'] if d != t]
    print(f'\n**Target {t}** (sources {others[0]} and {others[1]}); accuracy on {t}\'s 200 test sentences, '
          'mean ± sd (seeds)\n')
    print('| method | trained values | ' + ' | '.join(f'N = {n}' for n in sizes) + ' |')
    print('| --- | --- | ' + ' | '.join('---' for _ in sizes) + ' |')
    for m in ORDER:
        if m == 'probe':
            for o in others:
                mm = f'probe-{o}'
                if any(k[2] == mm for k in acc):
                    print(f'| probe of the {o} adapter (new head + 1 scale) | {trainable.get(mm, "")} | '
                          + ' | '.join(fmt(acc.get((t, n, mm), [])) for n in sizes) + ' |')
            continue
        if not any(k[0] == t and k[2] == m for k in acc):
            continue
        print(f'| {NAMES[m]} | {trainable.get(m, "")} | ' + ' | '.join(fmt(acc.get((t, n, m), [])) for n in sizes) + ' |')


def tau(a, b):
    c = d = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            x, y = a[i] - a[j], b[i] - b[j]
            if x * y > 0:
                c += 1
            elif x * y < 0:
                d += 1
    return (c - d) / max(c + d, 1)


print('\n**Did the scores rank the sources right?** Kendall\'s τ between each score and the accuracy of the '
      'source\'s probe, per task (target, N, seed; two sources each, so τ is +1 or −1, 0 on a tie), averaged:\n')
print('| score | mean τ | tasks ranked right / tasks |')
print('| --- | --- | --- |')
for s in ['logme', 'leep', 'nce']:
    taus = []
    for (t, n, seed), per in scores.items():
        names = sorted(per)
        accs = [acc_one for acc_one in (
            [r['accuracy'] for r in rows if r['target'] == t and r['n'] == n and r['seed'] == seed
             and r['method'] == f'probe-{src}'] for src in names)]
        if any(len(a) != 1 for a in accs):
            continue
        taus.append(tau([per[x][s] for x in names], [a[0] for a in accs]))
    if taus:
        print(f'| {s} | {st.mean(taus):+.2f} | {sum(1 for x in taus if x > 0)} / {len(taus)} |')
