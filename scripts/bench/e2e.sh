#!/usr/bin/env bash
# e2e: wall time of the booted-Debian end-to-end tests (tests/e2e_*.rs) with
# a warm rootfs cache, and of each container's copy, boot and poweroff.
# Target: the whole e2e under 10 minutes with a warm cache (issue #5).
# BENCH_COLD=1 first removes the cached rootfs to time a cold build too.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "e2e.sh: needs root (systemd-nspawn)" >&2; exit 2; }
cache=${ISTIO_VM_E2E_CACHE:-/var/cache/istio-vm-e2e}
if [ "${BENCH_COLD:-0}" = 1 ]; then
    rm -rf "$cache"
    t0=$(date +%s)
    scripts/e2e/debian-tree.sh >/dev/null
    echo "rootfs (cold debootstrap): $(($(date +%s) - t0)) s"
fi
scripts/e2e/debian-tree.sh >/dev/null
cargo build --quiet --examples --tests
log=$(mktemp)
trap 'rm -f "$log"' EXIT
t0=$(date +%s)
cargo test --quiet --test e2e_stand_in --test e2e_systemd -- --nocapture >"$log" 2>&1 || {
    tail -n 50 "$log" >&2
    exit 1
}
total=$(($(date +%s) - t0))
grep -E ': (rootfs copied|boot [0-9]+ reached|stopped) ' "$log" | sed 's/^/  /'
echo "e2e total (warm cache): $total s (target < 600 s)"
[ "$total" -lt 600 ]
