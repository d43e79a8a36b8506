#!/usr/bin/env bash
# Builds (once) a minimal Debian rootfs that boots with systemd, and prints
# its path.
#
#   scripts/e2e/debian-tree.sh [SUITE]
#
# SUITE is bullseye (Debian 11, systemd 247), bookworm (12, systemd 252) or
# trixie (13, systemd 257); default $ISTIO_VM_E2E_SUITE, else bookworm. Each
# suite has a cache of its own, so tests of all three run side by side. The result is cached outside the repository, keyed by the suite,
# the package list and this script's own bytes, so a change to either builds
# a fresh one. Callers copy it; they never boot the cached tree itself.
#
# The mirror is taken from this machine's apt sources at run time: the tests
# run wherever the machine's package registry is reachable, and no host name
# is written into the repository.
set -euo pipefail

suite=${1:-${ISTIO_VM_E2E_SUITE:-bookworm}}
case "$suite" in
    bullseye | bookworm | trixie) ;;
    *) echo "scripts/e2e/debian-tree.sh: unknown suite '$suite' (bullseye, bookworm or trixie)" >&2; exit 2 ;;
esac
# systemd, dbus: a booted system with systemctl. iproute2, iptables, sudo,
# hostname: what Istio's istio-sidecar package depends on (and what our
# stand-in of it depends on, see scripts/e2e/build-stand-in-deb.sh).
# nftables: the package's Recommends, for `--backend nftables`.
packages=systemd,systemd-sysv,dbus,iproute2,iptables,nftables,sudo,hostname
cache=${ISTIO_VM_E2E_CACHE:-/var/cache/istio-vm-e2e}

die() { echo "scripts/e2e/debian-tree.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap creates device nodes and chowns)"
command -v debootstrap >/dev/null ||
    die "debootstrap is missing: apt-get install -y debootstrap (scripts/install-test-deps.sh does it)"

key=$( { echo "$suite $packages"; cat "$0"; } | sha256sum | cut -c1-16)
dest=$cache/$suite-$key
if [ -f "$dest/.complete" ]; then
    echo "$dest/rootfs"
    exit 0
fi

# The first URIs/deb line naming the main Debian archive (not -security).
mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri=$(awk 'tolower($1)=="uris:" {for (i=2;i<=NF;i++) print $i}' "$f" |
            grep -v -- '-security' | head -n1)
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        uri=$(awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; break } }' "$f" |
            grep -v -- '-security' | head -n1)
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
}

mkdir -p "$cache"
# One builder per suite at a time: parallel tests wait here for the first
# one's tree; the suites build side by side.
exec 9>"$cache/.lock-$suite"
flock -w 900 9 || die "timed out waiting for another build of the rootfs (lock $cache/.lock)"
if [ -f "$dest/.complete" ]; then
    echo "$dest/rootfs"
    exit 0
fi

uri=$(mirror)
[ -n "$uri" ] || die "found no Debian mirror in /etc/apt/sources.list{,.d/*} to debootstrap from"

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
log=$dest.tmp/debootstrap.log
echo "scripts/e2e/debian-tree.sh: building $suite rootfs ($packages) from $uri" >&2
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$dest.tmp/rootfs" "$uri" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    [ -f "$dest.tmp/rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$dest.tmp/rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (full log: $log)"
fi
r=$dest.tmp/rootfs
# A clean, first-boot-like image: no machine id (systemd makes one at boot),
# no downloaded .debs, a root account that a console login would not need.
: >"$r/etc/machine-id"
rm -f "$r"/var/cache/apt/archives/*.deb
echo "istio-vm-e2e" >"$r/etc/hostname"
# debootstrap copied this machine's resolv.conf; the container runs on a
# private network, and its DNS capture rules should name a documentation
# address, not this machine's resolver.
echo "nameserver 203.0.113.53" >"$r/etc/resolv.conf"
touch "$dest.tmp/.complete"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest/rootfs"
