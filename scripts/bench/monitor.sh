#!/usr/bin/env bash
# monitor: CreateCertificate calls during a 30 s `verify --wait` against an
# ADS that closes (target: 1, however many attempts), and the size of the
# metrics textfile. Release binary, fake istiod, private network namespace
# (root).
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin istio-vm
out="$(VERIFY_BENCH_BIN="$target/release/istio-vm" \
    cargo test --quiet --test monitor_bench -- --ignored --nocapture --test-threads=1 2>&1)" || {
    echo "$out" >&2
    exit 1
}
out="$(grep -o 'BENCH .*' <<<"$out")"
echo "$out"
csrs="$(sed -n 's/^BENCH monitor.wait_csrs \([0-9]*\)/\1/p' <<<"$out")"
if [ "$csrs" -le 1 ]; then
    echo "ok    CSRs per --wait: $csrs (target <= 1)"
else
    echo "MANY  CSRs per --wait: $csrs (target <= 1)"
    exit 1
fi
