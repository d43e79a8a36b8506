#!/usr/bin/env bash
# install: median wall time (hyperfine) of
#   1. `istio-vm install` of the example bundle into a fresh scratch root,
#   2. a no-op re-run on the installed root (nothing written),
# beside the seed's manual procedure (seeds/000_*.txt: mkdir/cp/`cat hosts >>
# /etc/hosts`/chown -R, without dpkg and systemctl) run into a scratch root.
# Target: a no-op re-run under 20 ms (it reads, compares and writes nothing).
# The manual root has no `var/run -> /run` link: `mkdir -p ROOT/var/run/...`
# would follow it into the host's /run, the very escape istio-vm prevents.
# BENCH_BIN overrides the binary measured; BENCH_RUNS the run count.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/istio-vm}"
# Always (a no-op when fresh): a stale binary would measure old code.
cargo build --release --quiet
bin="$(realpath "$bin")"
runs="${BENCH_RUNS:-30}"
if ! command -v hyperfine >/dev/null; then
    echo "install.sh: needs hyperfine (apt-get install hyperfine)" >&2
    exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
bundle="$(realpath examples/bundle)"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n' >"$work/hosts0"

# A Debian-shaped root: /etc/hosts, /run/lock, var/run -> /run.
cat >"$work/fresh.sh" <<EOF
set -e
rm -rf "\$1"
mkdir -p "\$1/etc" "\$1/run/lock" "\$1/var/lib" "\$1/var/log"
cp "$work/hosts0" "\$1/etc/hosts"
[ "\${2:-}" = manual ] || ln -s /run "\$1/var/run"
EOF

# The seed's commands, paths prefixed with the root ($1).
cat >"$work/manual.sh" <<EOF
set -e
cd "$bundle"
mkdir -p "\$1/etc/certs"
cp root-cert.pem "\$1/etc/certs/root-cert.pem"
mkdir -p "\$1/var/run/secrets/tokens"
cp istio-token "\$1/var/run/secrets/tokens/istio-token"
mkdir -p "\$1/var/lib/istio/envoy" "\$1/etc/istio/config" "\$1/etc/istio/proxy"
cp cluster.env "\$1/var/lib/istio/envoy/cluster.env"
cp mesh.yaml "\$1/etc/istio/config/mesh"
sh -c "cat hosts >> \$1/etc/hosts"
chown -R "\$(id -u)" "\$1/var/lib/istio" "\$1/etc/certs" "\$1/etc/istio/proxy" "\$1/etc/istio/config" "\$1/var/run/secrets" "\$1/etc/certs/root-cert.pem"
EOF

# Disk first (every write is fsync'ed), then tmpfs (fsync is free there),
# which shows what the durability costs.
for place in ${BENCH_DIRS:-/tmp /dev/shm}; do
[ -d "$place" ] || continue
scratch="$(mktemp -d -p "$place")"
r="$scratch/root"
m="$scratch/manual"
echo "-- scratch roots on $place ($(stat -f -c %T "$place"))"
hyperfine -N --style basic --runs "$runs" --export-json "$work/out.json" \
    --command-name "istio-vm install (fresh root)" \
    --prepare "sh $work/fresh.sh $r" \
    "$bin --root $r install --bundle $bundle" \
    --command-name "manual seed commands (fresh root)" \
    --prepare "sh $work/fresh.sh $m manual" \
    "sh $work/manual.sh $m" >/dev/null

sh "$work/fresh.sh" "$r"
"$bin" --root "$r" install --bundle "$bundle" >/dev/null
sh "$work/fresh.sh" "$m" manual
hyperfine -N --style basic --runs "$runs" --warmup 3 --export-json "$work/noop.json" \
    --command-name "istio-vm install (no-op re-run)" \
    "$bin --root $r install --bundle $bundle" \
    --command-name "manual seed commands (re-run; appends hosts again)" \
    "sh $work/manual.sh $m" >/dev/null

python3 - "$work/out.json" "$work/noop.json" <<'EOF2'
import json, sys
for f in sys.argv[1:]:
    for r in json.load(open(f))["results"]:
        print(f"{r['command']:<52} median {r['median'] * 1000:7.2f} ms  (min {r['min'] * 1000:.2f}, max {r['max'] * 1000:.2f}, n={len(r['times'])})")
EOF2
echo "istiod lines in hosts after the re-runs: manual $(grep -c istiod "$m/etc/hosts"), istio-vm $(grep -c istiod "$r/etc/hosts")"
rm -rf "$scratch"
done
