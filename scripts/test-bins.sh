#!/usr/bin/env bash
# Runs every test binary of the crate (built once), several binaries at a
# time. Under `cargo test` each binary is already a process of its own, run
# one after another; running them side by side changes no test's meaning,
# and the booted-Debian binaries spend most of their time waiting on
# containers, so the suite's wall time is the longest binary's, not the sum.
# Prints each binary's output when it ends, and a closing summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=${ISTIO_VM_TEST_JOBS:-3}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# name<TAB>executable for each test target (lib unit tests, tests/*.rs).
cargo test --all-features --no-run --message-format=json-render-diagnostics 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        kind = m["target"]["kind"][0]
        name = m["target"]["name"] if kind == "test" else kind + ":" + m["target"]["name"]
        print(name + "\t" + m["executable"])
' >"$logs/bins"

# The longest first (measured), then the rest in name order.
slow=" fleet_ansible packaging_e2e e2e_systemd fleet_cloud_init repo_apt install_kills fleet_health monitor_e2e capture_e2e repo_rpm packaging_packages capture_netns "
{
    for s in $slow; do grep -P "^$s\t" "$logs/bins" || true; done
    sort "$logs/bins" | while IFS=$'\t' read -r n e; do
        case "$slow" in *" $n "*) ;; *) printf '%s\t%s\n' "$n" "$e" ;; esac
    done
} >"$logs/order"
[ -s "$logs/order" ] || { echo "scripts/test.sh: cargo built no test binary" >&2; exit 1; }

run_one() {
    local name=$1 exe=$2 logs=$3 start rc
    start=$(date +%s)
    rc=0
    "$exe" >"$logs/$name.log" 2>&1 </dev/null || rc=$?
    echo "$rc" >"$logs/$name.rc"
    echo "== $name: exit $rc in $(( $(date +%s) - start )) s"
}
export -f run_one
export TEST_LOGS=$logs

# The inner bash expands $1, $2 and $TEST_LOGS, not this one.
# shellcheck disable=SC2016
tr '\t' '\n' <"$logs/order" |
    xargs -d '\n' -n 2 -P "$jobs" bash -c 'run_one "$1" "$2" "$TEST_LOGS"' _

passed=0 failed=0 ignored=0 bad=()
while IFS=$'\t' read -r name _; do
    echo
    echo "==================== $name"
    cat "$logs/$name.log"
    rc=$(cat "$logs/$name.rc")
    [ "$rc" -eq 0 ] || bad+=("$name")
    while read -r p f i; do
        passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i))
    done < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$logs/$name.log")
done <"$logs/order"

echo
if [ "${#bad[@]}" -gt 0 ]; then
    echo "failing test binaries: ${bad[*]}"
    # A binary that died before its summary still counts as a failure.
    [ "$failed" -gt 0 ] || failed=${#bad[@]}
fi
echo "tests: $passed passed, $failed failed, $ignored skipped"
[ "${#bad[@]}" -eq 0 ]
