#!/usr/bin/env bash
# Fill bench/carry/ (git-ignored) with what the GPU machine needs and cannot download: the RTE and
# SST-2 data files and SmolLM2's tokenizer files (no weights: the GPU benchmarks build random-weight
# models of the real shapes). Run it here, in the checkout the GPU session sends, before the device
# `run` call that names bench/carry in `carry` (see bench/README.md, "GPU run").
#
#   bash bench/prepare_carry.sh [TOKENIZER_DIR]
#
# Data from $SOFTPROMPT_DATA, else ../shared/data beside the checkout; the tokenizer from
# TOKENIZER_DIR, else the dequantized smollm2-135m cache ($SOFTPROMPT_CACHE or ~/.cache/softprompt).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${SOFTPROMPT_DATA:-$root/../shared/data}
cache=${SOFTPROMPT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/softprompt}
tok=${1:-}
if [ -z "$tok" ]; then
    tok=$(find "$cache/models" -maxdepth 2 -path '*/smollm2-135m-*/tokenizer.json' 2>/dev/null | sort | tail -n 1 | xargs -r dirname)
fi
[ -n "$tok" ] && [ -f "$tok/tokenizer.json" ] || { echo "no SmolLM2 tokenizer folder (load smollm2-135m once, or pass one)" >&2; exit 1; }
for f in rte/train.jsonl rte/val.jsonl sst2/train.tsv sst2/dev.tsv; do
    [ -f "$data/$f" ] || { echo "missing $data/$f (set SOFTPROMPT_DATA)" >&2; exit 1; }
done

out=$root/bench/carry
tmp=$(mktemp -d "$root/bench/.carry.XXXXXX")
mkdir -p "$tmp/data/rte" "$tmp/data/sst2" "$tmp/tokenizer"
cp "$data/rte/train.jsonl" "$data/rte/val.jsonl" "$tmp/data/rte/"
cp "$data/sst2/train.tsv" "$data/sst2/dev.tsv" "$tmp/data/sst2/"
for f in tokenizer.json tokenizer_config.json special_tokens_map.json; do
    if [ -f "$tok/$f" ]; then cp "$tok/$f" "$tmp/tokenizer/"; fi
done
rm -rf "$out"
mv "$tmp" "$out"
kib=$(du -sk "$out" | cut -f1)
echo "bench/carry: $((kib / 1024)) MiB (data: rte, sst2; tokenizer from $tok)"
# the device tool carries 64 MiB in all, the working tree included: keep this folder small
[ "$kib" -lt $((32 * 1024)) ] || { echo "bench/carry is over 32 MiB: too large to carry" >&2; exit 1; }
