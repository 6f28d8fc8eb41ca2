#!/usr/bin/env bash
# Regenerate every fixture in tests/fixtures/ from the official rwkv package.
#
#   PYTHON=/path/to/venv/bin/python tools/oracle/make_fixtures.sh
#
# PYTHON     interpreter of a venv with torch, numpy, safetensors, rwkv==0.8.32
#            (default /work/venv/bin/python; see tools/oracle/README.md)
# ORACLE_WORK scratch directory for the .pth files, which are never committed
#            (default /tmp/tokenshift-oracle; it is wiped first). The path ends
#            up in the `command` metadata, so keep the default for
#            byte-identical regeneration.
#
# Every fixture directory tests/fixtures/<name>/ gets
#   model.safetensors     random-weight model (f32, BlinkDL names and shapes)
#   expected.safetensors  official logits/states for 24 random tokens (40 for RWKV-7,
#                         so the crate's chunked path runs, with a ragged last chunk)
set -euo pipefail

PYTHON="${PYTHON:-/work/venv/bin/python}"
WORK="${ORACLE_WORK:-/tmp/tokenshift-oracle}"

cd "$(dirname "$0")/../.."   # repository root
ORACLE=tools/oracle
FIXTURES=tests/fixtures
T=24

rm -rf "$WORK"
mkdir -p "$WORK" "$FIXTURES"

# name  version  expected-detected-version  n_layer n_embd head_size vocab lora_mix lora_decay  model_seed token_seed
FIXTURE_TABLE="
v4-a    4    4    2 64 16 128  8 16  4001 4101
v4-b    4    4    3 48 16 101 32 64  4002 4102
v5.0-a  5.0  5    2 64 16 128  8 16  5001 5101
v5.0-b  5.0  5    3 48 16 101 32 64  5002 5102
v5.1-a  5.1  5.1  2 64 16 128  8 16  5011 5111
v5.1-b  5.1  5.1  3 48 16 101 32 64  5012 5112
v5.2-a  5.2  5.2  2 64 16 128  8 16  5021 5121
v5.2-b  5.2  5.2  3 48 16 101 32 64  5022 5122
v6-a    6    6    2 64 16 128  8 16  6001 6101
v6-b    6    6    3 48 16 101 32 64  6002 6102
"

while read -r name ver detected L C N V DM DD mseed tseed; do
    [ -z "$name" ] && continue
    echo "=== $name"
    dir="$FIXTURES/$name"
    mkdir -p "$dir" "$WORK/$name"
    # head size and LoRA dims are ignored where the version has none
    "$PYTHON" "$ORACLE/make_model.py" --version "$ver" --n-layer "$L" --n-embd "$C" \
        --head-size "$N" --vocab "$V" --lora-mix "$DM" --lora-decay "$DD" \
        --seed "$mseed" --out "$WORK/$name/model"
    cp "$WORK/$name/model.safetensors" "$dir/model.safetensors"
    "$PYTHON" "$ORACLE/run_official.py" --model "$WORK/$name/model" \
        --n-tokens "$T" --seed "$tseed" --expect-version "$detected" \
        --max-self-diff 1e-5 --out "$dir/expected.safetensors"
done <<< "$FIXTURE_TABLE"

# RWKV-7, run by the package's RWKV_x070 class. v7-a: one head of the released size 64;
# v7-b: four heads of 16, LoRA ranks of the released minimum 32, block 0 without v0/v1/v2.
# name  n_layer n_embd head_size vocab  lora_w lora_a lora_v lora_g  block0_v  model_seed token_seed
V7_TABLE="
v7-a    2 64 64 128  16 16  8 32  keep  7001 7101
v7-b    3 64 16 101  32 32 32 32  omit  7002 7102
"
while read -r name L C N V DW DA DV DG block0 mseed tseed; do
    [ -z "$name" ] && continue
    echo "=== $name"
    dir="$FIXTURES/$name"
    mkdir -p "$dir" "$WORK/$name"
    omit=()
    [ "$block0" = omit ] && omit=(--omit-block0-v)
    "$PYTHON" "$ORACLE/make_model.py" --version 7 --n-layer "$L" --n-embd "$C" \
        --head-size "$N" --vocab "$V" --lora-decay "$DW" --lora-a "$DA" --lora-v "$DV" \
        --lora-g "$DG" "${omit[@]}" --seed "$mseed" --out "$WORK/$name/model"
    cp "$WORK/$name/model.safetensors" "$dir/model.safetensors"
    "$PYTHON" "$ORACLE/run_official.py" --model "$WORK/$name/model" \
        --n-tokens 40 --seed "$tseed" --expect-version 7 \
        --max-self-diff 1e-5 --out "$dir/expected.safetensors"
done <<< "$V7_TABLE"

# every fixture directory must stay under 1 MB
echo "=== sizes"
status=0
for dir in "$FIXTURES"/*/; do
    kb=$(du -sk "$dir" | cut -f1)
    echo "$kb KiB  $dir"
    if [ "$kb" -ge 1000 ]; then
        echo "error: $dir is larger than 1 MB" >&2
        status=1
    fi
done
rm -rf "$WORK"
exit $status
