#!/usr/bin/env bash
# Capture benchmark: one atomic apply (istio-vm capture apply, and the bare
# iptables-restore it is built on) versus the same rules applied with one
# `iptables` command per rule (how older tools did it), and remove.
# Runs in a throw-away network namespace; needs root. Uses hyperfine when
# installed (apt-get install hyperfine), else a plain timing loop.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
    echo "capture.sh: needs root (network namespace)" >&2
    exit 2
fi
bin="${CARGO_TARGET_DIR:-target}/release/istio-vm"
[ -x "$bin" ] || cargo build --release --quiet
bin="$(realpath "$bin")"

ns="ivmbench-$$"
work="$(mktemp -d)"
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up

# A typical VM: inbound *, outbound *, DNS capture (istioctl's cluster.env).
cat >"$work/cluster.env" <<'EOF'
ISTIO_INBOUND_PORTS='*'
ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'
ISTIO_META_DNS_CAPTURE='true'
ISTIO_SERVICE_CIDR='*'
EOF
echo "nameserver 127.0.0.53" >"$work/resolv.conf"
printf 'root:x:0:0::/root:/bin/bash\nistio-proxy:x:998:997::/var/lib/istio:/usr/sbin/nologin\n' >"$work/passwd"
printf 'root:x:0:\nistio-proxy:x:997:\n' >"$work/group"

# The tool sees the files at their VM paths through a private mount namespace.
tool() {
    ip netns exec "$ns" unshare -m sh -c "
        mount -t tmpfs none /var/lib && mkdir -p /var/lib/istio/envoy &&
        cp '$work/cluster.env' /var/lib/istio/envoy/ &&
        mount --bind '$work/resolv.conf' /etc/resolv.conf &&
        mount --bind '$work/passwd' /etc/passwd && mount --bind '$work/group' /etc/group &&
        exec '$bin' capture $* --backend iptables" >/dev/null
}
export -f tool
export ns work bin

# The rules as istio-vm renders them, and the same rules as one iptables
# command each.
mkdir -p "$work/root/var/lib/istio/envoy" "$work/root/etc"
cp "$work/cluster.env" "$work/root/var/lib/istio/envoy/"
cp "$work/resolv.conf" "$work/passwd" "$work/group" "$work/root/etc/"
"$bin" --root "$work/root" capture render --backend iptables | sed -n '/^\*/,/^COMMIT/p' >"$work/rules-v4"
awk '/^\*/ {t=substr($0,2); next} /^COMMIT/ {next} /^-/ {print "iptables-nft -w -t " t " " $0}' \
    "$work/rules-v4" >"$work/per-rule.sh"
rules=$(grep -c '^-[AI]' "$work/rules-v4")
flush="iptables-nft-restore <<'EOF'
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
EOF"
echo "$rules rules (IPv4, iptables-nft), kernel $(uname -r)"

nsx="ip netns exec $ns sh -c"
nsa=(ip netns exec "$ns" sh -c)
if command -v hyperfine >/dev/null; then
    hyperfine -N --warmup 3 --runs 30 --export-json "$work/h.json" \
        --prepare "$nsx \"$flush\"" -n "iptables-restore --noflush (one transaction)" \
        "$nsx 'iptables-nft-restore -w --noflush < $work/rules-v4'" \
        --prepare "$nsx \"$flush\"" -n "iptables, one command per rule" \
        "$nsx 'sh $work/per-rule.sh'" \
        --prepare "bash -c 'tool remove'" -n "istio-vm capture apply" \
        "bash -c 'tool apply'" \
        --prepare "bash -c 'tool apply'" -n "istio-vm capture remove" \
        "bash -c 'tool remove'"
    python3 - "$work/h.json" <<'EOF'
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
atomic = r["iptables-restore --noflush (one transaction)"]
per = r["iptables, one command per rule"]
print(f"per-rule / atomic restore: {per / atomic:.1f}x")
print(f"per-rule / istio-vm capture apply (end to end): {per / r['istio-vm capture apply']:.2f}x")
EOF
else
    ms() { local s e; s=$(date +%s%N); "$@"; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
    n=20
    for name in atomic per-rule apply remove; do
        total=0
        for _ in $(seq $n); do
            case $name in
            atomic) "${nsa[@]}" "$flush"; t=$(ms "${nsa[@]}" "iptables-nft-restore -w --noflush < $work/rules-v4") ;;
            per-rule) "${nsa[@]}" "$flush"; t=$(ms "${nsa[@]}" "sh $work/per-rule.sh") ;;
            apply) tool remove; t=$(ms tool apply) ;;
            remove) tool apply; t=$(ms tool remove) ;;
            esac
            total=$((total + t))
        done
        echo "$name: mean $((total / n)) ms over $n runs"
    done
fi
