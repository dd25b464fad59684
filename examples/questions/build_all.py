"""Collect the hand-written questions in raw/<label>.txt into all.jsonl (format only)."""

import json

LABELS = ["person", "place", "number", "reason", "definition", "thing"]
with open("all.jsonl", "w", encoding="utf-8") as out:
    for lab in LABELS:
        with open(f"raw/{lab}.txt", encoding="utf-8") as f:
            for line in f:
                t = " ".join(line.split())
                if t:
                    out.write(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n")
