#!/usr/bin/env bash
# THE prepared GPU run of issues #13 and #28: training (softprompt = the defaults: the `auto` scoring strategy, which
# on a GPU is one padded forward, replayed from CUDA graphs; the other arms: train_arms below, with what issue 28
# left pending a GPU: softprompt-lm, the answer-only-loss PEFT arm, a --prompt-format auto cell; TRAIN_ARMS /
# EVAL_ARMS override the arms, e.g. softprompt-eager without graphs, softprompt-kv_tree for the CPU's prefix tree)
# for both model shapes x RTE and SST-2 x batch 8 and 32, and evaluation vs the naive scorer, on one GPU in
# ~8 minutes (cells that do not fit are skipped, named in summary.md: rerun them by name); every result lands in
# $OUT (gpu_suite.json, summary.md, suite.log, cells.log).
# How to call it through the device tool, and how to fold the results in: bench/README.md, "GPU run".
#
#   bash bench/gpu_suite.sh                 # on the GPU machine, from the repository root
#   bash bench/gpu_suite.sh --cpu-dry-run   # here: every cell on CPU with tiny models (a few minutes)
#   bash bench/gpu_suite.sh train-bloomz-560m-rte-b32 eval-smollm2-135m   # only these cells (a rerun)
#   bash bench/gpu_suite.sh train-smollm2-135m-sst2-b32-auto              # a cell with --prompt-format auto
#   bash bench/gpu_suite.sh baselines       # only the baselines cells (train-...-baselines, ~3 min): LoRA and full
#                                           # fine-tuning, softprompt's loop vs PEFT's LoRA recipe / a plain HF loop
#
# Needs bench/carry/ (bash bench/prepare_carry.sh; $CARRY overrides it). Budgets, in seconds:
# SUITE_BUDGET_S for all cells (450), TRAIN_CELL_S, EVAL_CELL_S and BASELINE_CELL_S per cell (75, 90, 120). TRAIN_ARMS,
# EVAL_ARMS and BASELINE_ARMS replace the cells' --arms lists; TRAIN_EPOCHS timed epochs per training cell (1; rates are medians over them). A cell gets the
# smaller of its budget and what is left, is killed at its end (`timeout`), and a cell that would start
# with under 20 s left is skipped: one slow cell cannot eat the session. Inside a training cell the
# timed epoch is capped to fit (train_vs_peft.py --time-budget), so a slow arm gives fewer steps, not
# no result. The merged JSON and the tables are rewritten after every cell.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=""
cells=()
for a in "$@"; do
    case $a in
        --cpu-dry-run) dry=--cpu-dry-run ;;
        -*) echo "unknown option $a" >&2; exit 2 ;;
        *) cells+=("$a") ;;
    esac
done
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
CARRY=${CARRY:-bench/carry}
SUITE_BUDGET_S=${SUITE_BUDGET_S:-450}
BASELINE_CELL_S=${BASELINE_CELL_S:-120}
TRAIN_CELL_S=${TRAIN_CELL_S:-75}
EVAL_CELL_S=${EVAL_CELL_S:-90}
device=cuda
[ -n "$dry" ] && device=cpu
mkdir -p "$OUT"
work=$(mktemp -d)  # per-cell files: $OUT takes back at most 8 files, so they are merged into one JSON
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec > >(tee -a "$OUT/suite.log") 2>&1

# the issue's table, most wanted first (the MFU target cell, then one cell per shape and the evaluations), and one
# cell with the prompt format a user gets (`-auto`: --prompt-format auto, on SmolLM2's tokenizer the chat layout;
# SST-2 b32, where the chat template's tokens are the largest share of a row; a bloomz cell would resolve `auto` on
# the SmolLM2 tokenizer the shape borrows, not on bloomz's own, which has no chat template: plain, as measured)
# the baselines at prompt speed (issue 28, `-baselines`): LoRA and full fine-tuning, softprompt's own loop against
# PEFT's LoRA recipe and a plain HF fine-tuning loop (baseline_arms below); last in the defaults (they run if the
# budget is left), or alone: `bash bench/gpu_suite.sh baselines`
baseline_cells=(train-smollm2-135m-sst2-b8-baselines train-bloomz-560m-rte-b32-baselines)
default_cells=(
    train-bloomz-560m-rte-b32 train-smollm2-135m-rte-b8 eval-smollm2-135m eval-bloomz-560m
    train-smollm2-135m-rte-b32 train-smollm2-135m-sst2-b32-auto train-smollm2-135m-sst2-b8 train-smollm2-135m-sst2-b32
    train-bloomz-560m-rte-b8 train-bloomz-560m-sst2-b8 train-bloomz-560m-sst2-b32 "${baseline_cells[@]}"
)
[ ${#cells[@]} -gt 0 ] || cells=("${default_cells[@]}")
expanded=()  # `baselines` names the baselines cells
for c in "${cells[@]}"; do
    if [ "$c" = baselines ]; then expanded+=("${baseline_cells[@]}"); else expanded+=("$c"); fi
done
cells=("${expanded[@]}")

echo "gpu_suite: device $device, ${#cells[@]} cells, budget ${SUITE_BUDGET_S}s, out $OUT, carry $CARRY"
for f in "$CARRY/tokenizer/tokenizer.json" "$CARRY/data/rte/train.jsonl" "$CARRY/data/sst2/train.tsv"; do
    [ -f "$f" ] || { echo "missing $f: run bash bench/prepare_carry.sh first and name bench/carry in carry" >&2; exit 3; }
done
# preflight (seconds): the libraries, the device and the tokenizer, before any cell spends time
DEVICE=$device TOK="$CARRY/tokenizer" "$PY" - <<'EOF' || { echo "preflight failed" >&2; exit 3; }
import os, torch, transformers, peft
from transformers import AutoTokenizer
import softprompt.evaluate, softprompt.scoring, softprompt.training  # what the cells import
dev = os.environ["DEVICE"]
assert dev == "cpu" or torch.cuda.is_available(), "torch sees no CUDA device"
name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
tok = AutoTokenizer.from_pretrained(os.environ["TOK"])
print(f"preflight: {name}, torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"tokenizer {type(tok).__name__} ({len(tok)} tokens)")
EOF

# the default training arms of a cell (shape, task, batch): what issue 28 left pending a GPU first. softprompt (the
# defaults), softprompt-grouped (--group-by-length), softprompt-lm (PEFT's loss and schedule on softprompt's step:
# the same LM objective as the PEFT arms), PEFT's recipe fp32 and bf16, peft-bf16-grouped (PEFT tuned alike: dynamic
# padding, grouped batches) and peft-bf16-grouped-answer (the same with the LM head only at the answer's positions:
# the fairest PEFT arm). ABLATION_ARMS=1 adds the one-change-undone arms of the third session (measured then):
# softprompt-bucket64, on RTE b32 softprompt-nosplit, on BLOOM softprompt-alibi-eager and softprompt-bloom-gelu.
train_arms() {
    local arms=softprompt,softprompt-grouped,softprompt-lm
    if [ -n "${ABLATION_ARMS:-}" ]; then
        arms+=,softprompt-bucket64
        [ "$2-$3" = rte-32 ] && arms+=,softprompt-nosplit
        [ "${1#bloomz}" != "$1" ] && arms+=,softprompt-alibi-eager,softprompt-bloom-gelu
    fi
    echo "$arms,peft,peft-bf16,peft-bf16-grouped,peft-bf16-grouped-answer"
}
# the baselines cells' arms: softprompt's loop for each method, then its recipe fp32, bf16 and tuned for speed alike
# (grouped batches; and the LM head only at the answer's positions: the fairest recipe arm)
baseline_arms() {
    local arms=softprompt-lora,softprompt-finetune v
    for r in peft-lora hf-finetune; do
        for v in "" -bf16 -bf16-grouped -bf16-grouped-answer; do arms+=",$r$v"; done
    done
    echo "$arms"
}
merge() { "$PY" bench/gpu_tables.py --cells "$work" --out "$OUT/gpu_suite.json" --summary "$OUT/summary.md" || echo "merge failed"; }

start=$SECONDS
for cell in "${cells[@]}"; do
    left=$((SUITE_BUDGET_S - (SECONDS - start)))
    json="$work/$cell.json"
    case $cell in
        train-*-b*)
            rest=${cell#train-}; format=plain; kind=prompt
            # a trailing -baselines: the LoRA / fine-tuning arms (no CUDA graphs there: 3 warm-up steps suffice)
            [ "${rest%-baselines}" != "$rest" ] && { kind=baselines; rest=${rest%-baselines}; }
            # a trailing -auto: the cell runs with --prompt-format auto (every recorded cell ran plain)
            [ "${rest%-auto}" != "$rest" ] && { format=auto; rest=${rest%-auto}; }
            batch=${rest##*-b}; rest=${rest%-b*}; task=${rest##*-}; shape=${rest%-*}
            budget=$TRAIN_CELL_S
            # one timed epoch of 256 examples after one untimed epoch (every arm: the graph arms capture
            # each batch shape there, so the timed epoch is their steady state; the warm-up's cost is in the
            # JSON, warmup_s); what the cell keeps for startup, warm-up and the end: 35 s
            cmd=("$PY" bench/train_vs_peft.py --device "$device" --shape "$shape" --task "$task" --batch-size "$batch"
                 --train 256 --epochs "${TRAIN_EPOCHS:-1}" --warmup-steps $(( (256 + batch - 1) / batch )) --val 0 --mem-steps 0 --sync-every 8
                 --prompt-format "$format" --arms "${TRAIN_ARMS:-$(train_arms "$shape" "$task" "$batch")}")
            keep=35
            if [ $kind = baselines ]; then  # 10 arms, each its own copy of the model: 50 s kept for loading them
                budget=$BASELINE_CELL_S; keep=50
                cmd=("$PY" bench/train_vs_peft.py --device "$device" --shape "$shape" --task "$task" --batch-size "$batch"
                     --train 256 --epochs "${TRAIN_EPOCHS:-1}" --warmup-steps 3 --val 0 --mem-steps 0 --sync-every 8
                     --prompt-format "$format" --arms "${BASELINE_ARMS:-$(baseline_arms)}")
            fi
            ;;
        eval-*)
            shape=${cell#eval-}
            budget=$EVAL_CELL_S
            cmd=("$PY" bench/eval_vs_naive.py --device "$device" --shape "$shape" --tasks rte,sst2 --limit 128 --reps 2
                 --dtypes float32,auto --arms "${EVAL_ARMS:-softprompt,softprompt-lowp,naive}")
            ;;
        *) echo "unknown cell $cell: expected train-SHAPE-TASK-bBATCH[-auto][-baselines], eval-SHAPE or baselines" >&2; exit 2 ;;
    esac
    [ "$left" -lt "$budget" ] && budget=$left
    if [ "$budget" -lt 20 ]; then
        echo "{\"cell\": \"$cell\", \"state\": \"skipped (suite budget spent)\", \"budget_s\": $budget}" > "$work/$cell.status.json"
        echo "== $cell: skipped, ${left}s left"
        merge
        continue
    fi
    case $cell in train-*) cmd+=(--time-budget $((budget > keep + 15 ? budget - keep : budget / 3))) ;; esac
    # where the BLOOM step at b32 spends its time (5-8% of the bf16 peak before): an op table of 2 steps, in cells.log
    [ "$cell" = train-bloomz-560m-sst2-b32 ] && cmd+=(--profile-steps 2)
    cmd+=(--tokenizer "$CARRY/tokenizer" --data-dir "$CARRY/data" --json "$json" $dry)
    echo "== $cell (budget ${budget}s)"
    t0=$SECONDS
    timeout -k 10 "$budget" "${cmd[@]}" > "$work/$cell.log" 2>&1
    rc=$?
    secs=$((SECONDS - t0))
    state=ok
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && state="killed at its budget"
    [ $rc -ne 0 ] && [ "$state" = ok ] && state=failed
    echo "{\"cell\": \"$cell\", \"state\": \"$state\", \"rc\": $rc, \"seconds\": $secs, \"budget_s\": $budget}" > "$work/$cell.status.json"
    { echo "===== $cell: rc $rc, ${secs}s"; cat "$work/$cell.log"; } >> "$OUT/cells.log"
    echo "   $state, rc $rc, ${secs}s"
    [ $rc -eq 0 ] || tail -n 15 "$work/$cell.log"
    merge
done
echo "gpu_suite: done in $((SECONDS - start))s"
cat "$OUT/summary.md"
