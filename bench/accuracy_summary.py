"""Validation accuracy of train_vs_peft.py runs over seeds: per-seed table, means, paired differences.

Prompt tuning at this scale is unstable: one seed can land 20 points above another with the same
recipe, so a single run cannot rank two recipes. This reads the `--json` files of several seeds
(same arguments otherwise) and reports, for every arm against a reference arm, the mean paired
difference with a 95% t interval over seeds and the number of seeds each arm wins.

    .venv/bin/python bench/accuracy_summary.py bench/results/train_vs_peft_sst2_n256-s*.json --reference peft
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy import stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="train_vs_peft.py --json outputs, one per seed")
    ap.add_argument("--reference", default="peft", help="the arm the others are compared with")
    args = ap.parse_args()

    runs = []
    for f in args.files:
        info = json.loads(f.read_text())
        if info.get("partial"):
            raise SystemExit(f"{f}: a partial run (it was cut short); rerun that seed")
        runs.append((info["args"]["seed"], info["accuracy"], info.get("speedup_examples_per_s")))
    runs.sort()
    arms = list(runs[0][1])
    if args.reference not in arms:
        raise SystemExit(f"--reference {args.reference!r} is not an arm of these runs: {', '.join(arms)}")
    if any(list(acc) != arms for _, acc, _ in runs):
        raise SystemExit("the runs do not have the same arms; pass runs of one command line (different seeds)")

    print("| seed | " + " | ".join(arms) + " | speedup (examples/s) |")
    print("|---" * (len(arms) + 2) + "|")
    for seed, acc, speedup in runs:
        sp = f"{speedup:.2f}x" if speedup else ""
        print(f"| {seed} | " + " | ".join(f"{acc[a]:.3f}" for a in arms) + f" | {sp} |")
    print(
        "| mean (std) | "
        + " | ".join(
            f"{statistics.mean(r[1][a] for r in runs):.3f} ({statistics.stdev(r[1][a] for r in runs):.3f})" for a in arms
        )
        + " | |"
    )
    print()
    print(f"paired difference vs {args.reference} over {len(runs)} seeds (standard error; 95% t interval; wins/ties/losses):")
    ref = [r[1][args.reference] for r in runs]
    for a in arms:
        if a == args.reference:
            continue
        d = [r[1][a] - x for r, x in zip(runs, ref, strict=True)]
        mean = statistics.mean(d)
        se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
        half = stats.t.ppf(0.975, len(d) - 1) * se if len(d) > 1 else float("nan")
        w, t, lo = sum(x > 0 for x in d), sum(x == 0 for x in d), sum(x < 0 for x in d)
        print(f"  {a}: {mean:+.3f} (SE {se:.3f}) [{mean - half:+.3f}, {mean + half:+.3f}]  {w}/{t}/{lo}")


if __name__ == "__main__":
    main()
