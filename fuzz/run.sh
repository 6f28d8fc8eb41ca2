#!/usr/bin/env bash
# Runs one fuzz target for a while with libFuzzer, on the stable toolchain.
#
#   fuzz/run.sh TARGET SECONDS [extra libFuzzer flags...]
#
# TARGET is model_load, state_load, vocab, tokenizer_roundtrip or pth_load. The committed seeds
# (fuzz/seeds/TARGET) are read with the working corpus (fuzz/corpus/TARGET, where libFuzzer
# keeps what it finds); a crash, timeout or out-of-memory input lands in fuzz/artifacts/TARGET.
#
# Environment:
#   SANITIZER=address|none   default address (AddressSanitizer)
#   RAYON_NUM_THREADS        default 1 (one core per run; set it higher to fuzz the threaded
#                            products too)
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 TARGET SECONDS [libFuzzer flags...]" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2

dict=()
case $target in
    model_load) max_len=200000 dict=(-dict=fuzz/dicts/safetensors.dict) ;;
    state_load) max_len=100000 dict=(-dict=fuzz/dicts/safetensors.dict) ;;
    vocab) max_len=65536 dict=(-dict=fuzz/dicts/vocab.dict) ;;
    tokenizer_roundtrip) max_len=16384 ;;
    pth_load) max_len=200000 dict=(-dict=fuzz/dicts/pickle.dict) ;;
    *)
        echo "unknown target \`$target\` (model_load, state_load, vocab, tokenizer_roundtrip, pth_load)" >&2
        exit 2
        ;;
esac

cd "$(dirname "$0")/.."
mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"

# cargo fuzz passes nightly-only -Z flags to rustc (sanitizer, coverage passes); the stable
# compiler accepts them when told it is building itself.
export RUSTC_BOOTSTRAP=1
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}

cargo fuzz run --sanitizer "${SANITIZER:-address}" "$target" \
    "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=4096 \
    -print_final_stats=1 "${dict[@]}" "$@"
