#!/usr/bin/env bash
# Build the istio-vm .rpm for each architecture given (default: x86_64) with
# rpmbuild and rpm/istio-vm.spec, from the same release binary as the .deb.
#
#   scripts/build-rpm.sh [x86_64] [aarch64]
#
# Environment:
#   DIST_DIR       where the packages go (default: dist)
#   NO_BUILD=1    reuse the release binary already built
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
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

# The host's own architecture builds without --target so that it shares
# target/release with `cargo build --release` (and the tests).
host=$(rustc -vV | sed -n 's/^host: //p')

for arch in "${archs[@]}"; do
    case "$arch" in
        x86_64 | amd64)
            arch=x86_64
            triple=x86_64-unknown-linux-gnu
            ;;
        aarch64 | arm64)
            arch=aarch64
            triple=aarch64-unknown-linux-gnu
            ;;
        *)
            echo "build-rpm: unknown architecture '$arch' (x86_64 or aarch64)" >&2
            exit 2
            ;;
    esac
    target=()
    binary=$target_dir/release/istio-vm
    if [ "$triple" != "$host" ]; then
        target=(--target "$triple")
        binary=$target_dir/$triple/release/istio-vm
    fi
    if [ "${NO_BUILD:-}" != 1 ]; then
        cargo build --release --locked "${target[@]}" >&2
    fi
    [ -x "$binary" ] || {
        echo "build-rpm: $binary is missing: build it or drop NO_BUILD" >&2
        exit 1
    }
    topdir=$(mktemp -d)
    trap 'rm -rf "$topdir"' EXIT
    rpmbuild -bb --quiet --target "$arch-linux" \
        --define "_topdir $topdir" \
        --define "pkg_version $version" \
        --define "srcdir $repo" \
        --define "binary $binary" \
        rpm/istio-vm.spec >&2
    for rpm_file in "$topdir"/RPMS/*/*.rpm; do
        mv "$rpm_file" "$out_dir/"
        echo "$out_dir/$(basename "$rpm_file")"
    done
    rm -rf "$topdir"
    trap - EXIT
done
