#!/usr/bin/env bash
# Lint built packages and the maintainer scripts they carry.
#
#   scripts/lint-packages.sh dist/istio-vm_*.deb dist/istio-vm-*.rpm
#
# .deb: lintian --fail-on error,warning (overrides, each with its reason, are
# shipped in the package). .rpm: rpmlint with rpm/istio-vm.rpmlintrc, failing
# on any error. Both: shellcheck on every maintainer script / scriptlet as the
# package carries it. Exits non-zero on the first package that fails.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$#" -gt 0 ] || {
    echo "usage: $0 PACKAGE.deb|PACKAGE.rpm..." >&2
    exit 2
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for pkg in "$@"; do
    echo "== $pkg" >&2
    case "$pkg" in
        *.deb)
            lintian --fail-on error,warning --display-info "$pkg"
            dir=$scratch/$(basename "$pkg")
            dpkg-deb --control "$pkg" "$dir"
            for script in preinst postinst prerm postrm; do
                [ ! -e "$dir/$script" ] || shellcheck --shell=sh "$dir/$script"
            done
            ;;
        *.rpm)
            # rpmlint exits non-zero on errors (badness over the threshold).
            rpmlint --rpmlintrc rpm/istio-vm.rpmlintrc "$pkg"
            for tag in PREIN POSTIN PREUN POSTUN; do
                body=$(rpm -qp --qf "%{$tag}" "$pkg")
                [ "$body" != "(none)" ] || continue
                # Give the linter the interpreter rpm runs the scriptlet with.
                printf '#!/bin/sh\n%s\n' "$body" >"$scratch/$tag"
                shellcheck --shell=sh "$scratch/$tag"
            done
            ;;
        *)
            echo "lint-packages: $pkg is neither a .deb nor a .rpm" >&2
            exit 2
            ;;
    esac
done
