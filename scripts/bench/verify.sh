#!/usr/bin/env bash
# verify: healthy run on loopback (< 300 ms), istiod unreachable (within one
# --timeout, not a sum), peak RSS (< 30 MiB). Runs the release binary against
# the fake istiod and the stand-in agent in private network namespaces (root).
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin istio-vm
cargo build --quiet --example stand-in-agent
out="$(VERIFY_BENCH_BIN="$target/release/istio-vm" \
    cargo test --quiet --test verify_bench -- --ignored --nocapture --test-threads=1 2>&1)" || {
    echo "$out" >&2
    exit 1
}
out="$(grep -o 'BENCH .*' <<<"$out")"
echo "$out"

healthy="$(sed -n 's/^BENCH verify.healthy_ms median=\([0-9]*\).*/\1/p' <<<"$out")"
unreachable="$(sed -n 's/^BENCH verify.unreachable_ms \([0-9]*\).*/\1/p' <<<"$out")"
rss="$(sed -n 's/^BENCH verify.*_peak_rss_kib \([0-9]*\)/\1/p' <<<"$out" | sort -n | tail -1)"

fail=0
check() { # name value limit unit
    if [ "$2" -lt "$3" ]; then
        echo "ok    $1: $2 $4 (target < $3)"
    else
        echo "SLOW  $1: $2 $4 (target < $3)"
        fail=1
    fi
}
check "healthy verify (median)" "$healthy" 300 ms
# One --timeout (1000 ms) plus start-up, well below two timeouts.
check "istiod unreachable, --timeout 1s" "$unreachable" 1500 ms
check "peak RSS" "$rss" 30720 KiB
exit "$fail"
