"""Split all.jsonl into train/validation (85/45 per class) and run sanity checks."""

import json
import random
import re
from collections import Counter, defaultdict

LABELS = ["person", "place", "number", "reason", "definition", "thing"]
SEED = 20261207
N_TRAIN, N_VAL = 85, 45

with open("all.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
by_label = defaultdict(list)
for r in rows:
    by_label[r["label"]].append(r)

ok = True


def check(name, cond, detail=""):
    global ok
    ok &= bool(cond)
    print(f"[{'PASS' if cond else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))


# 1. counts and labels
check("all.jsonl has 780 lines", len(rows) == 780, str(len(rows)))
check("only known labels", set(by_label) <= set(LABELS), str(sorted(by_label)))
check(
    "130 per class", all(len(by_label[lab]) == 130 for lab in LABELS), ", ".join(f"{lab}={len(by_label[lab])}" for lab in LABELS)
)


# 2. duplicates (case-insensitive, whitespace-normalised)
def norm(t):
    return " ".join(t.lower().split())


dups = [t for t, c in Counter(norm(r["text"]) for r in rows).items() if c > 1]
check("no duplicate texts", not dups, f"{len(dups)} duplicates {dups[:5]}")

# 3. label words (word boundary, case-insensitive, with inflections)
LABEL_RE = re.compile(
    r"\b(persons?|places?|placed|placing|numbers?|numbered|numbering|"
    r"reasons?|reasoned|reasoning|reasonabl[ey]|definitions?|define[ds]?|defining|"
    r"things?)\b",
    re.I,
)
hits = [r["text"] for r in rows if LABEL_RE.search(r["text"])]
check("no label word in any text", not hits, f"{len(hits)} hits {hits[:5]}")
sub = [r["text"] for r in rows if re.search(r"thing|person|defin", r["text"], re.I)]
check("no 'thing'/'person'/'defin' even as substring (e.g. something)", not sub, str(sub[:5]))

# 4. length 5-25 words
bad_len = [r["text"] for r in rows if not 5 <= len(r["text"].split()) <= 25]
check("every text has 5-25 words", not bad_len, str(bad_len[:5]))
lens = [len(r["text"].split()) for r in rows]
print(f"       words per question: min {min(lens)}, mean {sum(lens) / len(lens):.1f}, max {max(lens)}")

# 5. cue-word avoidance
CUES = {
    "person": (r"^(who|whom|whose)\b", '"Who/Whom/Whose"'),
    "place": (r"^where\b", '"Where"'),
    "number": (r"^(how many|how much|when)\b", '"How many/How much/When"'),
    "reason": (r"^why\b", '"Why"'),
    "definition": (r"^(what is|what's|what are)\b", '"What is/What\'s/What are"'),
    "thing": (r"^(what|which)\b", '"What/Which"'),
}
print("Cue-word avoidance (share of questions NOT starting with the stereotypical cue):")
shares = {}
for lab in LABELS:
    pat, desc = CUES[lab]
    n = sum(1 for r in by_label[lab] if not re.search(pat, r["text"], re.I))
    shares[lab] = n / len(by_label[lab])
    print(f"       {lab:<10} avoids {desc:<28} {n:>3}/{len(by_label[lab])} = {shares[lab]:.1%}")
check("every class >= 40% cue-free", all(s >= 0.40 for s in shares.values()))
n_what = sum(1 for r in by_label["thing"] if not re.match(r"what\b", r["text"], re.I))
print(f'       thing      avoids "What" alone             {n_what:>3}/130 = {n_what / 130:.1%}')
first = Counter(r["text"].split()[0].strip(",").lower() for r in rows)
print("       first words overall:", ", ".join(f"{w} {c}" for w, c in first.most_common(15)))

# 6. split
rng = random.Random(SEED)
train, val = [], []
for lab in LABELS:
    items = list(by_label[lab])
    rng.shuffle(items)
    train += items[:N_TRAIN]
    val += items[N_TRAIN : N_TRAIN + N_VAL]
rng.shuffle(train)
rng.shuffle(val)
for name, split in (("train.jsonl", train), ("validation.jsonl", val)):
    with open(name, "w", encoding="utf-8") as f:
        for i, r in enumerate(split):
            f.write(json.dumps({"idx": i, "text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n")
    c = Counter(r["label"] for r in split)
    print(f"{name}: {len(split)} rows; " + ", ".join(f"{lab}={c[lab]}" for lab in LABELS))
tr = {norm(r["text"]) for r in train}
va = {norm(r["text"]) for r in val}
check("train/validation sizes 510/270", len(train) == 510 and len(val) == 270)
check("no overlap between train and validation", not (tr & va))
print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
