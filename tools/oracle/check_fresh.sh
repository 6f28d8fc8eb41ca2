#!/usr/bin/env bash
# Checks the crate's `logits` example against the official package on freshly generated models
# that are not among the committed fixtures (new seeds, other shapes), in both modes.
#
#   PYTHON=/path/to/venv/bin/python tools/oracle/check_fresh.sh [VERSION ...]
#
# Prints max |difference| per version and mode; exits non-zero if any exceeds 1e-4.
set -euo pipefail

PYTHON="${PYTHON:-/work/venv/bin/python}"
WORK="${ORACLE_WORK:-/tmp/tokenshift-fresh}"
cd "$(dirname "$0")/../.."
versions=("$@")
[ ${#versions[@]} -eq 0 ] && versions=(4 5.0 5.1 5.2 6 7)

cargo build --release --example logits -q
rm -rf "$WORK" && mkdir -p "$WORK"
status=0
for ver in "${versions[@]}"; do
    # A shape unlike the fixtures: 4 layers, 80 wide (5 heads of 16), vocab 203, 40 tokens.
    m="$WORK/v$ver"
    "$PYTHON" tools/oracle/make_model.py --version "$ver" --n-layer 4 --n-embd 80 \
        --head-size 16 --vocab 203 --lora-mix 16 --lora-decay 32 --lora-a 16 --lora-v 8 --lora-g 24 --seed 777 --out "$m" >/dev/null
    "$PYTHON" tools/oracle/run_official.py --model "$m" --n-tokens 40 --seed 778 \
        --out "$m.expected.safetensors" >/dev/null
    tokens=$("$PYTHON" -c "
from safetensors.numpy import load_file
print(','.join(str(int(t)) for t in load_file('$m.expected.safetensors')['tokens']))")
    for mode in seq step; do
        ./target/release/examples/logits --model "$m.safetensors" --tokens "$tokens" \
            --mode "$mode" --out "$m.$mode.safetensors" >/dev/null
        echo -n "version $ver, mode $mode: "
        "$PYTHON" tools/oracle/compare.py "$m.expected.safetensors" "$m.$mode.safetensors" \
            --key "logits_$mode" --tol 1e-4 | tail -1 || status=1
    done
done
exit $status
