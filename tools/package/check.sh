#!/usr/bin/env bash
# Checks the crate as the registry would serve it: packages it, unpacks the package into a
# scratch folder, runs the README's two commands there (timing the first build), then builds
# and runs the README's usage code as the `main` of a new crate that depends on the package.
#
#   tools/package/check.sh [SCRATCH_DIR]      (default: a new folder under /tmp)
#
# Needs cargo and the registry (or its cache) for the dependencies; no Python. Takes several
# minutes: every step builds from nothing, as a new user's machine would.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
scratch="${1:-$(mktemp -d /tmp/tokenshift-package.XXXXXX)}"
mkdir -p "$scratch"
cd "$repo"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"

echo "== cargo package (into $scratch/target)"
CARGO_TARGET_DIR="$scratch/target" cargo package --allow-dirty --no-verify --quiet
crate="$scratch/target/package/tokenshift-$version.crate"
ls -l "$crate"
tar -xzf "$crate" -C "$scratch"
unpacked="$scratch/tokenshift-$version"

# The README's commands, as its first lines give them.
readarray -t commands < <(awk '/^```sh$/{f=1;next} /^```$/{if(f)exit} f' README.md)
echo "== README commands: ${commands[*]}"
cd "$unpacked"
for cmd in "${commands[@]}"; do
  echo "== $cmd (in the unpacked package)"
  start=$(date +%s)
  case "$cmd" in
    *"--example generate"*) eval "$cmd -- --max-tokens 40" ;;
    *) eval "$cmd" ;;
  esac
  echo "== took $(( $(date +%s) - start )) s"
done

echo "== the README's usage code in a new crate"
user="$scratch/user-crate"
mkdir -p "$user/src"
cat > "$user/Cargo.toml" <<TOML
[package]
name = "user-crate"
version = "0.1.0"
edition = "2021"

[dependencies]
tokenshift = { path = "$unpacked" }
TOML
awk '/^## Usage$/{u=1} u&&/^```rust$/{f=1;next} f&&/^```$/{exit} f' "$repo/README.md" > "$user/src/main.rs"
test -s "$user/src/main.rs"
cd "$user"
start=$(date +%s)
cargo run --release --quiet
echo
echo "== took $(( $(date +%s) - start )) s"
echo "== all passed ($scratch)"
