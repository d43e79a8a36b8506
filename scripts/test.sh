#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run). Needs root: the capture,
# ownership and booted-Debian tests use network namespaces, chown and
# systemd-nspawn, and must run rather than be skipped. Run it as root, or as
# a user with sudo: it then re-executes itself through sudo, with this
# user's Rust toolchain (minimal Debian images have no sudo, and a root
# shell needs none).
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$self")/.."

if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "scripts/test.sh: run it as root (there is no sudo here): the netns," >&2
        echo "ownership and systemd-nspawn tests need root and are never skipped" >&2
        exit 2
    fi
    # sudo resets PATH and HOME: keep this user's cargo and rustup.
    exec sudo env "PATH=$PATH" \
        "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" \
        "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" \
        "$self" "$@"
fi

scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --all-targets --all-features -- -D warnings
# systemd-nspawn needs the system bus. Started once here, so that test
# binaries running side by side never start or stop it under each other.
if ! dbus-send --system --dest=org.freedesktop.DBus --type=method_call --print-reply \
    /org/freedesktop/DBus org.freedesktop.DBus.GetId >/dev/null 2>&1; then
    rm -f /run/dbus/pid /run/dbus/system_bus_socket
    mkdir -p /run/dbus
    dbus-daemon --system --fork
fi
cargo test --all-features --doc
scripts/test-bins.sh
