#!/usr/bin/env bash
# Bundle reading and validation: wall time and peak memory of
# `istio-vm validate` on the example bundle and on worst-case inputs
# (largest archive allowed, YAML bomb, deep nesting, 10 MiB file).
# Target: each under 0.5 s and 64 MiB on one core.
# BENCH_BIN overrides the binary measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/istio-vm}"
[ -x "$bin" ] || cargo build --release --quiet
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

measure() {
    local name="$1"
    shift
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f "$name: %e s, %M KiB peak" "$bin" --output json validate --bundle "$@" >/dev/null || true
    else
        local start end
        start=$(date +%s%N)
        "$bin" --output json validate --bundle "$@" >/dev/null || true
        end=$(date +%s%N)
        echo "$name: $(( (end - start) / 1000000 )) ms"
    fi
}

measure "example directory" examples/bundle

tar czf "$work/example.tar.gz" -C examples bundle
measure "example .tar.gz" "$work/example.tar.gz" --sha256 "$(sha256sum "$work/example.tar.gz" | cut -d' ' -f1)"

# 16 files of 1 MiB (incompressible): the largest archive accepted.
mkdir -p "$work/big/out"
cp examples/bundle/* "$work/big/out/"
for i in $(seq 1 15); do head -c 1048576 /dev/urandom >"$work/big/out/junk$i"; done
tar czf "$work/big.tar.gz" -C "$work/big" out
measure "16 MiB archive" "$work/big.tar.gz"

# Billion laughs and deep nesting in mesh.yaml.
mkdir -p "$work/bomb" "$work/deep" "$work/huge"
cp examples/bundle/* "$work/bomb/"
cp examples/bundle/* "$work/deep/"
cp examples/bundle/* "$work/huge/"
{
    echo 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
    prev=a
    for next in b c d e f g h i; do
        echo "$next: &$next [*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev]"
        prev=$next
    done
} >"$work/bomb/mesh.yaml"
measure "YAML bomb" "$work/bomb"
{ printf '%.0s[' $(seq 1 100000); printf '%.0s]' $(seq 1 100000); } >"$work/deep/mesh.yaml"
measure "YAML nesting 100000" "$work/deep"
head -c 10485760 /dev/zero | tr '\0' 'A' >"$work/huge/istio-token"
measure "10 MiB token" "$work/huge"
