#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (idempotent, quiet
# when everything is already there).
set -euo pipefail

pkgs=(iptables nftables iproute2 util-linux)
# Packaging (tests/packaging_*.rs): build, lint, cross-build and run arm64,
# install with the real dpkg and rpm.
pkgs+=(dpkg-dev lintian rpm rpmlint shellcheck cpio binutils groff-base
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
# Fleet examples (tests/packaging_fleet.rs): cloud-init's schema checker.
pkgs+=(cloud-init)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The arm64 packages are cross-built (.cargo/config.toml names the linker).
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    rustup target add aarch64-unknown-linux-gnu
fi

# Ansible for the role's syntax check and lint (tests/packaging_fleet.rs).
if ! command -v ansible-playbook >/dev/null || ! command -v ansible-lint >/dev/null; then
    python3 -m pip install --quiet --root-user-action=ignore \
        ansible-core==2.19.14 ansible-lint==26.10.1
fi
