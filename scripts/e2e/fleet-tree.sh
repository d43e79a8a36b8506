#!/usr/bin/env bash
# Builds (once) a variant of the e2e rootfs with extra Debian packages, and
# prints its path. The fleet tests need them: cloud-init for the NoCloud
# boot, openssh-server and python3 for Ansible.
#
#   scripts/e2e/fleet-tree.sh PACKAGE[,PACKAGE...]
#
# It starts from scripts/e2e/debian-tree.sh's cached tree (so the base stays one
# build shared with the e2e tests) and installs the packages with apt in a
# chroot, from the mirror debootstrap wrote into the tree. The result is
# cached beside the base, keyed by the base, the package list and this
# script's bytes. Callers copy it; they never boot the cached tree itself.
set -euo pipefail

die() { echo "scripts/e2e/fleet-tree.sh: $*" >&2; exit 1; }

if [ $# -ne 1 ] || [ -z "$1" ]; then
    die "usage: $0 PACKAGE[,PACKAGE...]"
fi
extra=$1
IFS=, read -r -a extra_pkgs <<<"$extra"
[ "$(id -u)" -eq 0 ] || die "needs root (chroot, apt)"

here=$(cd "$(dirname "$0")" && pwd)
base=$("$here/debian-tree.sh" | tail -n1)
[ -x "$base/usr/lib/systemd/systemd" ] || die "scripts/e2e/debian-tree.sh printed '$base', which holds no systemd"
cache=${ISTIO_VM_E2E_CACHE:-/var/cache/istio-vm-e2e}

key=$( { echo "$base $extra"; cat "$0"; } | sha256sum | cut -c1-16)
dest=$cache/variant-$key
if [ -f "$dest/.complete" ]; then
    echo "$dest/rootfs"
    exit 0
fi

mkdir -p "$cache"
# One builder per variant: parallel tests wait for the first one's tree.
exec 9>"$dest.lock"
flock -w 900 9 || die "timed out waiting for another build of $dest (lock $dest.lock)"
if [ -f "$dest/.complete" ]; then
    echo "$dest/rootfs"
    exit 0
fi

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
r=$dest.tmp/rootfs
cp -a --reflink=auto "$base" "$r"
log=$dest.tmp/apt.log

mounted=()
cleanup() {
    local m
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        m=${mounted[$i]}
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}
trap cleanup EXIT
for fs in proc sys dev; do
    mount --bind "/$fs" "$r/$fs"
    mounted+=("$r/$fs")
done
# The tree's resolv.conf names a documentation address (the containers run on
# private networks); apt in the chroot resolves with this machine's.
cp "$r/etc/resolv.conf" "$dest.tmp/resolv.conf.image"
cp -L /etc/resolv.conf "$r/etc/resolv.conf"
# Nothing starts inside the chroot: services start when a container boots.
printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
chmod 0755 "$r/usr/sbin/policy-rc.d"

echo "scripts/e2e/fleet-tree.sh: adding $extra to the e2e rootfs" >&2
# Proxies of this machine's apt configuration apply (apt reads them itself).
if ! {
    chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        apt-get update &&
        chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${extra_pkgs[@]}"
} >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "apt-get in the chroot failed (full log: $log)"
fi

# With locales, the locale a Debian cloud image has generated (cloud-init's
# locale module sets en_US.UTF-8 and fails if it is not there).
if [ -f "$r/etc/locale.gen" ]; then
    sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$r/etc/locale.gen"
    chroot "$r" locale-gen >>"$log" 2>&1 || die "locale-gen failed (log: $log)"
fi
rm -f "$r/usr/sbin/policy-rc.d"
cp "$dest.tmp/resolv.conf.image" "$r/etc/resolv.conf"
chroot "$r" apt-get clean
rm -rf "$r"/var/lib/apt/lists/*
# Host keys made while building would be shared by every copy: each
# container makes its own (the tests run ssh-keygen -A in their copy).
rm -f "$r"/etc/ssh/ssh_host_*
: >"$r/etc/machine-id"
cleanup
mounted=()
touch "$dest.tmp/.complete"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest/rootfs"
