#!/usr/bin/env bash
# Release binary size against its target: at most 4.8 MiB (5033164 bytes),
# as `cargo build --release` makes it (LTO, codegen-units 1, opt-level z,
# strip, panic abort). Prints the bytes; exits 1 when over. scripts/bench.sh
# builds the binary first, so this costs no build of its own; the shipped
# binary (cargo-zigbuild, glibc 2.17 floor) is checked by pkg.sh.
# Where the bytes go: cargo-bloat (cargo install --locked cargo-bloat) with
# `--config 'profile.bloat.inherits="release"' --profile bloat --crates`:
# it builds without strip, so a profile of its own keeps target/release as
# shipped.
# BENCH_BIN overrides the binary measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/istio-vm}"
# Always (a no-op when fresh): a stale binary would measure old code.
cargo build --release --quiet
limit=5033164
bytes=$(stat -c %s "$bin")
awk -v b="$bytes" -v l="$limit" 'BEGIN {
    printf "release binary %9d bytes  %6.2f MiB  (limit %.1f MiB) %s\n", b, b / 1048576, l / 1048576, (b > l ? "OVER" : "ok")
}'
[ "$bytes" -le "$limit" ]
