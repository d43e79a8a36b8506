#!/usr/bin/env bash
# Bundle reading and validation: wall time and peak memory of
# `istio-vm validate` on the example bundle and on worst-case inputs: the
# largest archive and the largest file accepted (really read and parsed),
# and hostile input that must be refused (YAML bomb, deep nesting, a file
# and an archive over the limits), each with the finding it must give.
# Target: each under 0.5 s and 64 MiB on one core.
#
# Every case states its expected exit code and finding; a run that gives
# anything else (a crash, another finding, an accepted bomb) stops the
# script with its output: a figure is printed only for the case its label
# names. BENCH_BIN overrides the binary measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/istio-vm}"
# Always (a no-op when fresh): a stale binary would measure old code.
cargo build --release --quiet
if ! /usr/bin/time -f '%e' true 2>/dev/null; then
    echo "bundle.sh: needs GNU time at /usr/bin/time (apt-get install time)" >&2
    exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# measure LABEL EXIT FINDING -- validate arguments...
# FINDING is the one finding code expected, or `none`.
measure() {
    local name="$1" want_exit="$2" want_code="$3"
    shift 4
    local out="$work/out.json" tm="$work/time.txt" rc=0
    /usr/bin/time -o "$tm" -f '%e %M' \
        "$bin" --output json validate --bundle "$@" >"$out" 2>"$work/err.txt" || rc=$?
    local codes
    codes=$(grep -o '"code": "[^"]*"' "$out" | cut -d'"' -f4 | sort -u | paste -sd, -) || true
    [ -n "$codes" ] || codes=none
    if [ "$rc" -ne "$want_exit" ] || [ "$codes" != "$want_code" ]; then
        {
            echo "bundle.sh: case \"$name\": exit $rc with findings [$codes]," \
                "expected exit $want_exit with [$want_code]"
            cat "$out" "$work/err.txt"
        } >&2
        exit 1
    fi
    # GNU time puts "Command exited with non-zero status N" before its line.
    local secs kib
    read -r secs kib < <(tail -n1 "$tm")
    if ! [[ "$secs" =~ ^[0-9]+\.[0-9]+$ && "$kib" =~ ^[0-9]+$ ]] || [ "$kib" -eq 0 ]; then
        echo "bundle.sh: case \"$name\": no measurement from GNU time: $(cat "$tm")" >&2
        exit 1
    fi
    echo "$name: $secs s, $kib KiB peak"
}

measure "example directory: accepted" 0 none -- examples/bundle

tar czf "$work/example.tar.gz" -C examples bundle
measure "example .tar.gz with --sha256: accepted" 0 none -- \
    "$work/example.tar.gz" --sha256 "$(sha256sum "$work/example.tar.gz" | cut -d' ' -f1)"

# The largest archive accepted: the bundle plus incompressible files of at
# most 1 MiB each, unpacking to just under the 16 MiB limit.
limit=$((16 * 1024 * 1024))
mkdir -p "$work/big/out"
cp examples/bundle/* "$work/big/out/"
for i in $(seq 1 15); do head -c 1048576 /dev/urandom >"$work/big/out/junk$i"; done
used=$(cat "$work/big/out/"* | wc -c)
head -c $((limit - used - 65536)) /dev/urandom >"$work/big/out/junk16"
tar czf "$work/big.tar.gz" -C "$work/big" out
measure "archive unpacking to 16 MiB - 64 KiB: accepted" 0 none -- "$work/big.tar.gz"

# One more MiB: over the limit (the archive itself is now over 16 MiB).
head -c 1048576 /dev/urandom >"$work/big/out/junk17"
tar czf "$work/over.tar.gz" -C "$work/big" out
measure "archive over 16 MiB: refused" 1 bundle.too_large -- "$work/over.tar.gz"

# The largest file accepted, really parsed: a 1 MiB token (the example's
# claims plus one long claim; its signature is not checked on the VM).
mkdir -p "$work/bigtoken" "$work/huge" "$work/bomb" "$work/deep"
cp examples/bundle/* "$work/bigtoken/"
python3 - "$work/bigtoken/istio-token" <<'EOF'
import base64, json, sys
path = sys.argv[1]
head, payload, sig = open(path).read().strip().split(".")
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
def token(pad):
    claims["x-pad"] = "x" * pad
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}\n"
base = len(token(0))
# base64 turns 3 bytes into 4: fill to just under 1 MiB.
open(path, "w").write(token((1024 * 1024 - base) * 3 // 4 - 16))
EOF
size=$(wc -c <"$work/bigtoken/istio-token")
if [ "$size" -gt 1048576 ] || [ "$size" -lt 1040000 ]; then
    echo "bundle.sh: the big token is $size bytes, not just under 1 MiB" >&2
    exit 1
fi
measure "1 MiB token (largest file): accepted" 0 none -- "$work/bigtoken"

# Ten times the file limit: refused from its size, not read.
cp examples/bundle/* "$work/huge/"
head -c 10485760 /dev/zero | tr '\0' 'A' >"$work/huge/istio-token"
measure "10 MiB token: refused" 1 bundle.too_large -- "$work/huge"

# Billion laughs and deep nesting in mesh.yaml.
cp examples/bundle/* "$work/bomb/"
cp examples/bundle/* "$work/deep/"
{
    echo 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
    prev=a
    for next in b c d e f g h i; do
        echo "$next: &$next [*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev]"
        prev=$next
    done
} >"$work/bomb/mesh.yaml"
measure "YAML bomb (9^9 aliases): refused" 1 mesh.parse -- "$work/bomb"
{ printf '%.0s[' $(seq 1 100000); printf '%.0s]' $(seq 1 100000); } >"$work/deep/mesh.yaml"
measure "YAML nesting 100000 deep: refused" 1 mesh.parse -- "$work/deep"
