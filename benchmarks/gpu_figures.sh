#!/usr/bin/env bash
# The GPU figures of issues 21 and 23 in one run (about 5-6 minutes on an H200, at most about 9), each step under
# its own timeout, results appended to $OUT/gpu_figures.jsonl as each step finishes (and each build's nvidia-smi
# samples and log under $OUT).
#
#   benchmarks/gpu_figures.sh PROJECT [--smoke]
#
# PROJECT: a project folder holding datasets/main.csv and store/catalog.duckdb with 87_glue_cola,
# 60_wikidata_occupation_isathlete and 100_news_fake imported (read only: each build works on a copy).
# Run from the repository root; featstore runs from the source folder (PYTHONPATH), $PYTHON (default python3).
# --smoke: a CPU dry run with tiny models (random:tiny, random:llama-tiny), --limit 8, short timeouts.
set -u
project=$(cd "${1:?usage: gpu_figures.sh PROJECT [--smoke]}" && pwd)
smoke=${2:-}
OUT=${OUT:?set OUT to the folder for results}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results="$OUT/gpu_figures.jsonl"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
budget=390  # seconds: steps that would start after this are skipped (the device lends 15 minutes in all)

if [ "$smoke" = "--smoke" ]; then
    gpt2=random:tiny; llama=random:llama-tiny; limit=8; device=cpu; long=60; short=60; lengths="16 32"
else
    gpt2=random:gpt2-medium; llama=random:llama-1b; limit=300; device=cuda; long=120; short=75; lengths="512 1024"
fi
datasets="87_glue_cola 60_wikidata_occupation_isathlete 100_news_fake"
figures() { timeout "$1" "$PYTHON" benchmarks/gpu_figures.py "${@:2}" --out "$results" --device "$device" \
    --project "$project" --limit "$limit" --datasets $datasets || echo "{\"step\": \"$2\", \"failed\": $?}" >> "$results"; }
left() { [ $(( $(date +%s) - started )) -lt "$budget" ] || { echo "skipped $1: over budget" >> "$OUT/skipped.txt"; false; }; }

build() {  # label, then featstore build options
    local label=$1; shift
    left "$label" || return 0
    local root="$work/$label"
    mkdir -p "$root/store" && cp -r "$project/datasets" "$root/" && cp "$project/store/catalog.duckdb" "$root/store/"
    local sampler=""
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -lms 500 > "$OUT/$label.smi.csv" &
        sampler=$!
    fi
    local begin; begin=$(date +%s%N)
    timeout "$long" "$PYTHON" -m featstore.cli --root "$root" build --datasets $datasets --limit "$limit" \
        --device "$device" "$@" > "$OUT/$label.log" 2>&1
    local status=$?
    local wall; wall=$(awk "BEGIN { print ($(date +%s%N) - $begin) / 1e9 }")
    [ -n "$sampler" ] && kill "$sampler"
    if [ "$status" -ne 0 ]; then
        echo "{\"step\": \"build\", \"label\": \"$label\", \"failed\": $status, \"wall\": $wall}" >> "$results"
        return 0
    fi
    timeout 60 "$PYTHON" benchmarks/gpu_figures.py build --out "$results" --label "$label" --project "$root" \
        --wall "$wall" --smi "$OUT/$label.smi.csv"
    rm -rf "$root/store/features.zarr"
}

"$PYTHON" -c "import sys, torch, transformers, zarr; print(sys.version.split()[0], torch.__version__, transformers.__version__, \
zarr.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" > "$OUT/versions.txt" 2>&1

# (a) + (c): the builds, nvidia-smi sampled alongside each
build gpt2-fp32-default --model "$gpt2" --dtype float32
build gpt2-bf16-65536 --model "$gpt2" --dtype bfloat16 --batch-tokens 65536
build llama1b-bf16-default --model "$llama" --dtype bfloat16
build llama1b-bf16-pattern --model "$llama" --dtype bfloat16 --capture pattern
# (b): the bare SDPA forward on the same lengths and budgets
bare_budget=$([ "$smoke" = "--smoke" ] && echo 2048 || echo 8192)
left bare && figures "$short" bare --label gpt2-fp32-bare-8192 --model "$gpt2" --dtype float32 --batch-tokens "$bare_budget"
left bare && figures "$short" bare --label gpt2-bf16-bare-65536 --model "$gpt2" --dtype bfloat16 --batch-tokens 65536
left bare && figures "$short" bare --label llama1b-bf16-bare-8192 --model "$llama" --dtype bfloat16 --batch-tokens "$bare_budget"
left bare && figures "$short" bare --label llama1b-bf16-bare-65536 --model "$llama" --dtype bfloat16 --batch-tokens 65536
# (d): last-row against pattern at 512 and 1,024 tokens (issue 21)
left captures && figures "$short" captures --label gpt2-bf16-captures --model "$gpt2" --dtype bfloat16 \
    --batch-tokens 16384 --lengths $lengths
left captures && figures "$short" captures --label llama1b-bf16-captures --model "$llama" --dtype bfloat16 \
    --batch-tokens 16384 --lengths $lengths
# (e): the host path alone on this machine's cores (issue 23's "3x today's tokens/s"), CPU only, if time is left
host_limit=$([ "$smoke" = "--smoke" ] && echo 16 || echo 300)
left host_path && timeout 100 "$PYTHON" benchmarks/host_path.py --project "$project" --models random:gpt2-medium \
    --limit "$host_limit" --bare-tokens 1024 > "$OUT/host_path.txt" 2>&1
# (f): featstore against the sae-probes-style peer at 1,000 examples of 87_glue_cola (issue 21), if time is left
peer_limit=$([ "$smoke" = "--smoke" ] && echo 16 || echo 1000)
if left peer; then
    peer_root="$work/peer" && mkdir -p "$peer_root" && cp -r "$project/datasets" "$project/store" "$peer_root/"
    timeout 120 "$PYTHON" benchmarks/build_and_read.py --model "$gpt2" --dataset 87_glue_cola --limit "$peer_limit" \
        --root "$peer_root" --batch-tokens "$bare_budget" --peer > "$OUT/peer.txt" 2>&1
fi
echo "{\"step\": \"done\", \"seconds\": $(( $(date +%s) - started ))}" >> "$results"
