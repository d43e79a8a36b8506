#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (idempotent, quiet
# when everything is already there).
set -euo pipefail

pkgs=(iptables nftables iproute2 util-linux systemd)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
