#!/usr/bin/env bash
# Builds a STAND-IN for Istio's `istio-sidecar` .deb, for the end-to-end tests
# only. No real Istio can be installed where the tests run, so this package
# has the real one's layout and maintainer behaviour (reference §2: the
# istio.service unit in /lib/systemd/system, /usr/local/bin/istio-start.sh,
# /usr/local/bin/pilot-agent, sidecar.env as a conffile, a postinst that
# creates istio-proxy), with our test agent (examples/stand-in-agent) in
# place of pilot-agent and Envoy.
#
# usage: build-stand-in-deb.sh STAND_IN_AGENT_BINARY OUTPUT.deb
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 STAND_IN_AGENT_BINARY OUTPUT.deb" >&2; exit 2; }
agent=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$agent" ] || { echo "$0: $agent is not an executable (cargo build --example stand-in-agent)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "$0: dpkg-deb is missing (apt-get install -y dpkg)" >&2; exit 1; }

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT

install -D -m 0755 "$agent" "$tree/usr/local/lib/istio-stand-in/stand-in-agent"
install -D -m 0755 "$here/stand-in/pilot-agent" "$tree/usr/local/bin/pilot-agent"
install -D -m 0755 "$here/stand-in/istio-start.sh" "$tree/usr/local/bin/istio-start.sh"
install -D -m 0644 "$here/stand-in/istio.service" "$tree/lib/systemd/system/istio.service"
install -D -m 0644 "$here/stand-in/sidecar.env" "$tree/var/lib/istio/envoy/sidecar.env"
install -D -m 0755 "$here/stand-in/postinst" "$tree/DEBIAN/postinst"
echo /var/lib/istio/envoy/sidecar.env >"$tree/DEBIAN/conffiles"
cat >"$tree/DEBIAN/control" <<CONTROL
Package: istio-sidecar
Version: 1.28.0~standin
Architecture: $(dpkg --print-architecture)
Maintainer: istio-vm tests <istio-vm-tests@example.invalid>
Depends: iproute2, iptables, sudo, hostname
Section: net
Priority: optional
Description: STAND-IN for Istio's istio-sidecar package (tests only)
 Same unit, start script and postinst layout as Istio's istio-sidecar
 package, with a small test agent in place of pilot-agent and Envoy. It
 does not proxy traffic and never talks to istiod.
CONTROL

mkdir -p "$(dirname "$out")"
dpkg-deb --root-owner-group -Zgzip -z1 --build "$tree" "$out" >/dev/null
