#!/usr/bin/env bash
# Capture benchmark: `istio-vm capture apply` and `remove` against one bare
# `iptables-restore --noflush` of the same rules (issue target: each within
# 2x), side by side in one hyperfine run, plus the per-rule baseline (one
# `iptables` command per rule, how older tools did it).
# Runs in a throw-away network namespace; needs root. Uses hyperfine when
# installed (apt-get install hyperfine), else a plain timing loop.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
    echo "capture.sh: needs root (network namespace)" >&2
    exit 2
fi
bin="${CARGO_TARGET_DIR:-target}/release/istio-vm"
# Always (a no-op when fresh): a stale binary would measure old code.
cargo build --release --quiet
bin="$(realpath "$bin")"
# BENCH_RT=1: measure at real-time priority (SCHED_FIFO 50), so that other
# work on a busy machine does not land inside the timings; the ratios are
# then close to a quiet machine's.
if [ "${BENCH_RT:-}" = 1 ] && [ -z "${BENCH_RT_ON:-}" ]; then
    exec chrt -f 50 env BENCH_RT_ON=1 bash "$0" "$@"
fi

ns="ivmbench-$$"
work="$(mktemp -d)"
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

# The tool sees the files at their VM paths through a private mount
# namespace made once and entered for every run, like the network namespace,
# so the tool and the bare restore pay the same wrapper (nsenter) cost.
mnt="/run/ivmbench-$$.mnt"
touch "$mnt"
mount --bind "$mnt" "$mnt"
mount --make-private "$mnt"
cleanup() {
    umount -l "$mnt" 2>/dev/null || true
    umount -l "$mnt" 2>/dev/null || true
    rm -f "$mnt"
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
unshare --mount="$mnt" --propagation private sh -c "
    mount -t tmpfs none /var/lib && mkdir -p /var/lib/istio/envoy &&
    cp '$work/cluster.env' /var/lib/istio/envoy/ &&
    mount --bind '$work/resolv.conf' /etc/resolv.conf &&
    mount --bind '$work/passwd' /etc/passwd && mount --bind '$work/group' /etc/group"
in_ns() { nsenter --mount="$mnt" --net="/run/netns/$ns" "$@"; }
tool() { in_ns "$bin" capture "$@" --backend iptables >/dev/null; }
export -f tool in_ns
export ns work bin mnt

# The rules as istio-vm renders them, and the same rules as one iptables
# command each.
mkdir -p "$work/root/var/lib/istio/envoy" "$work/root/etc"
cp "$work/cluster.env" "$work/root/var/lib/istio/envoy/"
cp "$work/resolv.conf" "$work/passwd" "$work/group" "$work/root/etc/"
"$bin" --root "$work/root" capture render --backend iptables | sed -n '/^\*/,/^COMMIT/p' >"$work/rules-v4"
awk '/^\*/ {t=substr($0,2); next} /^COMMIT/ {next} /^-/ {print "iptables-nft -w -t " t " " $0}' \
    "$work/rules-v4" >"$work/per-rule.sh"
# The same rules taken out again in one transaction, as `remove` does it:
# the built-in chains' rules deleted, then Istio's chains flushed and
# deleted. Deleting costs the kernel more than adding (it waits for
# readers of the old rules), so `remove` is also compared with this.
awk '/^\*/ {print; n=0; next}
     /^-N / {ch[++n]=$2; next}
     /^-A (PREROUTING|INPUT|OUTPUT|POSTROUTING) / {sub(/^-A/, "-D"); print; next}
     /^COMMIT/ {for (i=1;i<=n;i++) print "-F " ch[i]; for (i=1;i<=n;i++) print "-X " ch[i]; print}' \
    "$work/rules-v4" >"$work/remove-v4"
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
refill="$flush"$'\n'"iptables-nft-restore -w --noflush < $work/rules-v4"
echo "$rules rules (IPv4, iptables-nft), kernel $(uname -r)"

nsx="nsenter --mount=$mnt --net=/run/netns/$ns sh -c"
nsa=(nsenter --mount="$mnt" --net="/run/netns/$ns" sh -c)
if command -v hyperfine >/dev/null; then
    hyperfine -N --warmup 3 --runs 40 --export-json "$work/h.json" \
        --prepare "$nsx \"$flush\"" -n "iptables-restore --noflush (one transaction)" \
        "bash -c 'in_ns iptables-nft-restore -w --noflush < $work/rules-v4'" \
        --prepare "$nsx \"$refill\"" \
        -n "iptables-restore --noflush of the removal (one transaction)" \
        "bash -c 'in_ns iptables-nft-restore -w --noflush < $work/remove-v4'" \
        --prepare "$nsx \"$flush\"" -n "iptables, one command per rule" \
        "$nsx 'sh $work/per-rule.sh'" \
        --prepare "bash -c 'tool remove'" -n "istio-vm capture apply" \
        "bash -c 'tool apply'" \
        --prepare "bash -c 'tool apply'" -n "istio-vm capture remove" \
        "bash -c 'tool remove'" \
        --prepare "bash -c 'tool apply'" -n "bash wrapper alone" \
        "bash -c 'true'"
    python3 - "$work/h.json" "$rules" <<'PY'
import json, sys
# Medians: robust against a busy machine's outliers.
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
rules = int(sys.argv[2])
# The restore and the tool runs are started the same way (`bash -c` then
# nsenter into the namespaces); bash's own start is measured and taken off.
wrap = r["bash wrapper alone"]
atomic = r["iptables-restore --noflush (one transaction)"] - wrap
per = r["iptables, one command per rule"]
apply = r["istio-vm capture apply"] - wrap
remove = r["istio-vm capture remove"] - wrap
unrestore = r["iptables-restore --noflush of the removal (one transaction)"] - wrap
print(f"bare restore: {atomic*1000:.1f} ms; bare removal restore: {unrestore*1000:.1f} ms; apply {apply*1000:.1f} ms; remove {remove*1000:.1f} ms")
print(f"apply / bare restore: {apply / atomic:.2f}x   (target <= 2x)")
print(f"remove / bare restore: {remove / atomic:.2f}x  (target <= 2x)")
print(f"remove / bare removal restore: {remove / unrestore:.2f}x")
print(f"per-rule baseline: {per*1000:.1f} ms for {rules} rules = {per*1000/rules:.2f} ms/rule, {per / atomic:.1f}x the atomic restore")
PY
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
