#!/usr/bin/env bash
# Build the istio-vm .rpm for each architecture given (default: x86_64) with
# rpmbuild and rpm/istio-vm.spec, from the same release binary as the .deb.
#
#   scripts/build-rpm.sh [x86_64] [aarch64]
#
# Environment:
#   DIST_DIR       where the packages go (default: dist)
#   NO_BUILD=1    reuse the release binary already built (scripts/build-binary.sh)
#
# Prints the path of each package on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

out_dir=${DIST_DIR:-dist}
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
archs=("$@")
[ "${#archs[@]}" -gt 0 ] || archs=(x86_64)

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
# The SPDX expression of what the binary links (scripts/licenses.sh).
license_expr=$(scripts/licenses.sh --expression)

for arch in "${archs[@]}"; do
    case "$arch" in
        x86_64 | amd64) arch=x86_64 ;;
        aarch64 | arm64) arch=aarch64 ;;
        *)
            echo "build-rpm: unknown architecture '$arch' (x86_64 or aarch64)" >&2
            exit 2
            ;;
    esac
    # The binary for the glibc floor, the one the .deb ships.
    binary=$(scripts/build-binary.sh "$arch")
    topdir=$(mktemp -d)
    trap 'rm -rf "$topdir"' EXIT
    rpmbuild -bb --quiet --target "$arch-linux" \
        --define "_topdir $topdir" \
        --define "pkg_version $version" \
        --define "srcdir $repo" \
        --define "binary $binary" \
        --define "license_expr $license_expr" \
        rpm/istio-vm.spec >&2
    for rpm_file in "$topdir"/RPMS/*/*.rpm; do
        mv "$rpm_file" "$out_dir/"
        echo "$out_dir/$(basename "$rpm_file")"
    done
    rm -rf "$topdir"
    trap - EXIT
done
