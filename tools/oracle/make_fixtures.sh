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
#   expected.safetensors  official logits/states for 24 random tokens
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
