#!/usr/bin/env bash
# Third-party license notices of the istio-vm binary, from Cargo.lock.
#
#   scripts/licenses.sh            regenerate packaging/licenses/THIRD-PARTY-NOTICES
#   scripts/licenses.sh --check    fail unless the committed notices match
#                                  Cargo.lock, debian/copyright names every
#                                  license in them, and `cargo deny check
#                                  licenses bans sources` passes
#   scripts/licenses.sh --expression
#                                  print the SPDX expression of the binary
#                                  (the rpm's License:), from the notices
#
# Tools, pinned and installed with `cargo install --locked` on first use:
# cargo-about (notices, about.toml + about.hbs) and cargo-deny (deny.toml).
# Both read the crates' sources that cargo has already fetched (--frozen:
# offline, as in CI; `cargo fetch --locked` first on a fresh machine);
# cargo-deny's advisories check, which needs the RustSec database from the
# network, is not run (see README "Licenses").
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_ABOUT_VERSION=0.9.3
CARGO_DENY_VERSION=0.20.2
notices=packaging/licenses/THIRD-PARTY-NOTICES

expression() {
    sed -n 's/^License-Expression: //p' "$1"
}

if [ "${1:-}" = --expression ]; then
    expr=$(expression "$notices")
    [ -n "$expr" ] || { echo "licenses: no License-Expression in $notices" >&2; exit 1; }
    echo "$expr"
    exit 0
fi

need() { # tool version [features]
    if [ "$("$1" --version 2>/dev/null)" != "$1 $2" ]; then
        echo "licenses: installing $1 $2" >&2
        cargo install --locked "$1" --version "$2" ${3:+--features "$3"} >&2
    fi
}
need cargo-about "$CARGO_ABOUT_VERSION" cli

generate() { # output
    cargo about generate --frozen --fail about.hbs -o "$1" 2>/dev/null ||
        cargo about generate --frozen --fail about.hbs -o "$1"
}

case "${1:-}" in
    "")
        generate "$notices"
        echo "licenses: wrote $notices ($(expression "$notices"))" >&2
        ;;
    --check)
        scratch=$(mktemp)
        trap 'rm -f "$scratch"' EXIT
        generate "$scratch"
        if ! diff -u "$notices" "$scratch" >&2; then
            echo "licenses: $notices does not match Cargo.lock: run scripts/licenses.sh and commit it" >&2
            exit 1
        fi
        # debian/copyright (machine-readable) has a License paragraph for
        # each license the binary carries.
        missing=()
        for id in $(expression "$notices" | sed 's/ AND / /g'); do
            grep -qx "License: $id" debian/copyright || missing+=("$id")
        done
        if [ "${#missing[@]}" -gt 0 ]; then
            echo "licenses: debian/copyright lacks a 'License: ID' paragraph for: ${missing[*]}" >&2
            exit 1
        fi
        need cargo-deny "$CARGO_DENY_VERSION"
        cargo deny --frozen check licenses bans sources
        ;;
    *)
        echo "usage: $0 [--check | --expression]" >&2
        exit 2
        ;;
esac
