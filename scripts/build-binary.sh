#!/usr/bin/env bash
# Build the release binary that both packages ship, for one architecture, so
# that it runs on every glibc from 2.17 on (EL7/Amazon Linux 2 and later,
# Debian 9 and later), and print its path.
#
#   scripts/build-binary.sh amd64|arm64
#
# Why glibc 2.17 and not static musl: istio-vm looks up istio-proxy through
# NSS (nix::unistd::User::from_name) like useradd, systemd and the agent do;
# musl has no NSS, so on a VM whose users come from LDAP or sssd it would not
# see the same uid as the rules must match. A glibc binary built against
# glibc 2.17's symbol versions (cargo-zigbuild with zig's glibc stubs) keeps
# NSS and runs on the VMs people have; the packages then declare
# libc6 (>= 2.17)-ish dependencies, computed from the symbols actually used.
#
# Tools, pinned and installed on first use: cargo-zigbuild (the Rust registry, cargo
# install --locked) and zig (PyPI's ziglang; cargo-zigbuild finds it as
# `python3 -m ziglang`).
#
# Environment: NO_BUILD=1 only prints the path of the binary already built.
# QUICK_ARCHS="arm64 ...": for tests only, those architectures are built with
# the release profile's optimisation cut down (no LTO, 16 codegen units,
# opt-level 1), at the same path: the same code, the same glibc stubs and
# floor, a fraction of the CPU time. The packaging tests use it for the
# architecture they cannot boot (arm64 runs under qemu there); what ships is
# always built without it.
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC_FLOOR=2.17
CARGO_ZIGBUILD_VERSION=0.24.1
ZIGLANG_VERSION=0.15.2

case "${1:-}" in
    amd64 | x86_64) triple=x86_64-unknown-linux-gnu ;;
    arm64 | aarch64) triple=aarch64-unknown-linux-gnu ;;
    *)
        echo "build-binary: unknown architecture '${1:-}' (amd64 or arm64)" >&2
        exit 2
        ;;
esac

target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
binary=$target_dir/$triple/release/istio-vm

if [ "${NO_BUILD:-}" != 1 ]; then
    if [ "$(cargo-zigbuild --version 2>/dev/null)" != "cargo-zigbuild $CARGO_ZIGBUILD_VERSION" ]; then
        echo "build-binary: installing cargo-zigbuild $CARGO_ZIGBUILD_VERSION" >&2
        cargo install --locked cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION" >&2
    fi
    if [ "$(python3 -m ziglang version 2>/dev/null)" != "$ZIGLANG_VERSION" ]; then
        echo "build-binary: installing zig $ZIGLANG_VERSION (PyPI ziglang)" >&2
        python3 -m pip install -q --root-user-action=ignore --break-system-packages \
            "ziglang==$ZIGLANG_VERSION" >&2
    fi
    rustup target list --installed | grep -qx "$triple" || rustup target add "$triple" >&2
    # The .2.17 suffix selects zig's glibc 2.17 stubs; the output lands in
    # target/<triple>/release as for a plain --target build.
    quick=()
    case " ${QUICK_ARCHS:-} " in
        *" $1 "*)
            quick=(CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
                CARGO_PROFILE_RELEASE_OPT_LEVEL=1)
            ;;
    esac
    env "${quick[@]}" cargo zigbuild --release --locked --target "$triple.$GLIBC_FLOOR" >&2
fi
[ -x "$binary" ] || {
    echo "build-binary: $binary is missing: build it or drop NO_BUILD" >&2
    exit 1
}
echo "$binary"
