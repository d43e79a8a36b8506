#!/usr/bin/env bash
# Builds (once) the e2e rootfs variant the monitoring tests boot, and prints
# its path: the base tree plus Debian's prometheus-node-exporter (the real
# consumer of `verify --textfile`) and curl to scrape it from inside.
#
# The variant is built and cached by scripts/e2e/fleet-tree.sh, keyed by
# this package list.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/fleet-tree.sh" prometheus-node-exporter,curl
