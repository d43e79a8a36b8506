#!/usr/bin/env bash
# Mutation testing of the pure core with cargo-mutants: does a unit test
# fail when the code is wrong? Too slow for CI on 2 cores; run it by hand
# after changing one of these files, one file set at a time:
#
#   scripts/mutants.sh                 # every set, smallest first
#   scripts/mutants.sh report hosts    # only these sets
#   scripts/mutants.sh --list          # the sets and their files
#
# Each missed mutant needs a unit test that kills it, or a line in
# tests/mutants-equivalent.txt saying why it cannot change behaviour (those
# are excluded here). Target: at least 90% of viable mutants caught per file.
# A mutant whose tests hang until the timeout counts as caught: the suite did
# not pass (a lexer whose `+=` became `-=` never advances), as cargo-mutants'
# own guide treats it; the count is still printed apart.
# Results go to mutants.out/<set>/ (outcomes.json, caught.txt, missed.txt…).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_MUTANTS_VERSION=27.1.0
JOBS=${MUTANTS_JOBS:-1}
# The unit tests take about 5 s on a quiet machine; 60 s leaves room for a
# loaded one. Lower it on a quiet machine, as each hanging mutant costs it.
TEST_TIMEOUT=${MUTANTS_TEST_TIMEOUT:-60}

# name=files (space separated), fewest mutants first. Several files in one
# set share one baseline build; the counts are still given per file.
SETS=(
    "bundle-mod=src/bundle/mod.rs"
    "root_cert=src/bundle/root_cert.rs"
    "report=src/report.rs"
    "token=src/bundle/token.rs"
    "hosts=src/bundle/hosts.rs"
    "generate=src/capture/model.rs src/capture/generate/mod.rs src/capture/generate/outbound.rs"
    "mesh_config=src/bundle/mesh_config.rs"
    "cluster_env=src/bundle/cluster_env.rs"
    "plan=src/plan.rs"
    "iptables=src/capture/iptables.rs"
    "nft=src/capture/nft.rs"
    "source=src/bundle/source.rs"
    "validate-shell=src/validate/shell.rs"
    "validate=src/validate/mod.rs src/validate/cert_token.rs src/validate/keys.rs"
    "validate-env=src/validate/env.rs src/validate/mesh_hosts.rs"
)

if [ "${1:-}" = "--list" ]; then
    printf '%s\n' "${SETS[@]}"
    exit 0
fi

if [ "$(cargo mutants --version 2>/dev/null)" != "cargo-mutants $CARGO_MUTANTS_VERSION" ]; then
    cargo install cargo-mutants --version "$CARGO_MUTANTS_VERSION" --locked
fi

# tests/mutants-equivalent.txt: `file: mutant description  # why` (the
# name cargo-mutants prints, without line and column, so that edits above
# it do not make the entry stale); each becomes an exact --exclude-re.
# shellcheck disable=SC2016 # a sed expression, not a shell one
quote() { printf '%s' "$1" | sed 's/[][\.*^$()+?{}|]/\\&/g'; }
exclude=()
while IFS= read -r line; do
    case $line in '#'* | '') continue ;; esac
    line=${line%%  #*}
    file=${line%%: *}
    desc=${line#*: }
    exclude+=(--exclude-re "^$(quote "$file"):[0-9]+:[0-9]+: $(quote "$desc")\$")
done < tests/mutants-equivalent.txt

# One target directory for every mutant build (they run one at a time), kept
# apart from the normal one; no debug info, so each mutant links faster.
export CARGO_TARGET_DIR="$PWD/target/mutants"
export CARGO_PROFILE_DEV_DEBUG=0

wanted=("$@")
selected() {
    [ ${#wanted[@]} -eq 0 ] && return 0
    local w
    for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done
    return 1
}

status=0
for set in "${SETS[@]}"; do
    name=${set%%=*}
    selected "$name" || continue
    files=()
    for f in ${set#*=}; do files+=(--file "$f"); done
    echo "== $name: ${set#*=}" >&2
    mkdir -p "mutants.out/$name"
    start=$(date +%s)
    # --lib: the pure core is proven by its unit tests; the root/netns and
    # booted tests are too slow to run per mutant.
    # A generous minimum test timeout: on a loaded 2-core machine the unit
    # tests' wall time varies tenfold, and a slow run is not a hang.
    if cargo mutants --no-shuffle --jobs "$JOBS" --all-features --cargo-arg=--lib \
        --minimum-test-timeout "$TEST_TIMEOUT" \
        --output "mutants.out/$name" "${files[@]}" "${exclude[@]}"; then
        :
    else
        rc=$?
        # 2: mutants missed; 3: only timeouts (caught, see above); anything
        # else: the run itself broke.
        case $rc in 2) status=2 ;; 3) ;; *) exit "$rc" ;; esac
    fi
    out="mutants.out/$name/mutants.out"
    echo "== $name: $(($(date +%s) - start)) s" >&2
    for f in ${set#*=}; do
        count() { grep -c "^$f:" "$out/$1.txt" || true; }
        caught=$(count caught)
        missed=$(count missed)
        unviable=$(count unviable)
        timeout=$(count timeout)
        viable=$((caught + missed + timeout))
        pct=100
        [ "$viable" -gt 0 ] && pct=$((100 * (caught + timeout) / viable))
        echo "== $f: caught $caught, missed $missed, timeout $timeout, unviable $unviable ($pct% of viable caught)" >&2
        if [ "$pct" -lt 90 ]; then
            echo "== $f: below the 90% target" >&2
            status=2
        fi
    done
    if [ -s "$out/missed.txt" ]; then
        sed 's/^/   missed: /' "$out/missed.txt" >&2
    fi
done
exit "$status"
