#!/usr/bin/env bash
# The whole test suite, as CI runs it. Needs root: the capture, ownership and
# booted-Debian tests use network namespaces, chown and systemd-nspawn, and
# must run rather than be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (sudo scripts/test.sh): the netns, ownership" >&2
    echo "and systemd-nspawn tests need it and are never skipped" >&2
    exit 2
fi

scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --all-targets --all-features -- -D warnings
cargo test --all-features --no-fail-fast
