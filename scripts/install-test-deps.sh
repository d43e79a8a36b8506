#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (idempotent, quiet
# when everything is already there).
set -euo pipefail

# One package per line, so areas add theirs without touching others'.
pkgs=(
    iptables
    nftables
    # Capture coexistence (tests/capture_netns.rs): firewalld in a namespace.
    firewalld
    iproute2
    util-linux
    cloud-init
    systemd
    # The booted-Debian e2e tests (tests/e2e_*.rs, scripts/e2e/).
    debootstrap
    systemd-container
    dbus
    # Packaging (tests/packaging_*.rs): build, lint, cross-build and run
    # arm64 under qemu, install with the real dpkg and rpm.
    dpkg-dev
    lintian
    rpm
    rpmlint
    shellcheck
    cpio
    binutils
    groff-base
    gcc-aarch64-linux-gnu
    libc6-dev-arm64-cross
    qemu-user-static
    # Fleet e2e (tests/fleet_*.rs): the Ansible controller's ssh client.
    openssh-client
    # Signed repositories (scripts/build-repo.sh, tests/repo_*.rs).
    apt-utils
    createrepo-c
    dnf
    gnupg
    gpgv
    xz-utils
    # Kill at every syscall that changes the tree (tests/install_kills.rs).
    strace
    # Monitoring (tests/monitor_*.rs): promtool checks the textfile and the
    # alerting rules.
    prometheus
)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python tools from PyPI (fleet examples are checked with the real ones).
if ! command -v ansible-lint >/dev/null || ! command -v ansible-playbook >/dev/null; then
    python3 -m pip install -q --root-user-action=ignore ansible-core ansible-lint
fi

# The arm64 packages are cross-built (.cargo/config.toml names the linker).
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    rustup target add aarch64-unknown-linux-gnu
fi

# The fleet e2e tests package this run's binary as the real .deb with the
# cargo-deb that scripts/build-deb.sh pins.
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb 3.8.0" ]; then
    cargo install --locked cargo-deb --version 3.8.0
fi
