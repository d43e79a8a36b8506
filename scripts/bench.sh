#!/usr/bin/env bash
# Speed and memory targets, measured (never asserted in timed tests).
# Runs every scripts/bench/<area>.sh in turn; each prints its own figures.
# Needs root for the capture benchmark (it uses a throw-away netns).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
for b in scripts/bench/*.sh; do
    [ -e "$b" ] || continue
    echo "== $b"
    bash "$b"
done
