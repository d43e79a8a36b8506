#!/usr/bin/env bash
# Package sizes against the targets: stripped binary <= 4.8 MiB, .deb and
# .rpm <= 4 MiB, for amd64 and arm64 (release profile: LTO, codegen-units 1,
# strip, opt z). size.sh checks the plain `cargo build --release` binary.
# Prints one line per artefact; exits 1 if a target is missed.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mapfile -t debs < <(DIST_DIR=$out scripts/build-deb.sh amd64 arm64)
mapfile -t rpms < <(NO_BUILD=1 DIST_DIR=$out scripts/build-rpm.sh x86_64 aarch64)

fail=0
report() { # name bytes limit
    local verdict=ok
    if [ "$2" -gt "$3" ]; then
        verdict=OVER
        fail=1
    fi
    awk -v n="$1" -v b="$2" -v l="$3" -v v="$verdict" 'BEGIN {
        printf "%-20s %9d bytes  %6.2f MiB  (limit %.1f MiB) %s\n", n, b, b / 1048576, l / 1048576, v
    }'
}
for deb in "${debs[@]}"; do
    arch=$(dpkg-deb --field "$deb" Architecture)
    dir=$out/x-$arch
    dpkg-deb -x "$deb" "$dir"
    report "binary ($arch)" "$(stat -c %s "$dir/usr/bin/istio-vm")" 5033164 # 4.8 MiB
    report ".deb ($arch)" "$(stat -c %s "$deb")" $((4 * 1048576))
done
for rpm in "${rpms[@]}"; do
    report ".rpm ($(rpm -qp --qf '%{ARCH}' "$rpm"))" "$(stat -c %s "$rpm")" $((4 * 1048576))
done
exit "$fail"
