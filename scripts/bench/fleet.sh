#!/usr/bin/env bash
# fleet: wall time of the fleet e2e (tests/fleet_cloud_init.rs,
# tests/fleet_ansible.rs) with warm rootfs caches, and the times those tests
# print: the cloud-init boot to onboarded, the three-host first Ansible run
# and the no-change run. Target: the fleet e2e under 8 minutes warm (issue #8).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "fleet.sh: needs root (systemd-nspawn, netns)" >&2; exit 2; }
# Warm the caches first: the base rootfs and both fleet variants.
scripts/e2e/fleet-tree.sh cloud-init,locales >/dev/null
scripts/e2e/fleet-tree.sh openssh-server,python3,python3-apt >/dev/null
cargo build --quiet --examples --tests
log=$(mktemp)
trap 'rm -f "$log"' EXIT
t0=$(date +%s)
cargo test --quiet --test fleet_cloud_init --test fleet_ansible -- --nocapture >"$log" 2>&1 || {
    tail -n 60 "$log" >&2
    exit 1
}
total=$(($(date +%s) - t0))
grep -E '^(cloud-init|fleet): ' "$log" | sed 's/^/  /'
echo "fleet e2e total (warm cache): $total s (target < 480 s)"
[ "$total" -lt 480 ]
