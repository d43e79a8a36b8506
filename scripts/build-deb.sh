#!/usr/bin/env bash
# Build the istio-vm .deb for each architecture given (default: amd64).
#
#   scripts/build-deb.sh [amd64] [arm64]
#
# Environment:
#   DIST_DIR       where the packages go (default: dist)
#   DEB_REVISION  Debian revision (default: 1); a rebuilt package for an
#                 upgrade test uses 2
#   NO_BUILD=1    reuse the release binary already built by
#                 scripts/build-binary.sh (scripts/build-rpm.sh packages the
#                 same one)
#
# Prints the path of each package on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

# cargo-deb changes behaviour between minor versions (conffiles in 2.4, the
# unit directory in 3.3, tar paths in 3.6.2): pin it.
CARGO_DEB_VERSION=3.8.0

if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION" >&2
fi

out_dir=${DIST_DIR:-dist}
mkdir -p "$out_dir"
archs=("$@")
[ "${#archs[@]}" -gt 0 ] || archs=(amd64)

for arch in "${archs[@]}"; do
    case "$arch" in
        amd64 | x86_64) triple=x86_64-unknown-linux-gnu ;;
        arm64 | aarch64) triple=aarch64-unknown-linux-gnu ;;
        *)
            echo "build-deb: unknown architecture '$arch' (amd64 or arm64)" >&2
            exit 2
            ;;
    esac
    # The binary for the glibc floor (scripts/build-binary.sh says why).
    scripts/build-binary.sh "$arch" >/dev/null
    # It lives under target/<triple>/release; cargo-deb rewrites the
    # target/release/ asset path accordingly.
    cargo deb --no-build --locked --target "$triple" \
        --deb-revision "${DEB_REVISION:-1}" --output "$out_dir" -q
done
