#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for FUZZ_SECONDS from its committed
# seed corpus (fuzz/corpus/<target>). Prints, per target, the executions and the result, and
# exits non-zero if any target crashed (panic, failed contract assertion, sanitizer report),
# hung or ran out of memory; the offending input and the run's log are kept in
# fuzz/artifacts/<target>/.
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_TARGETS    space-separated subset of targets (default: all of `cargo fuzz list`)
#   FUZZ_SANITIZER  address (default) or none
#   FUZZ_CORPUS     directory to keep the grown corpora in (default: a temporary directory,
#                   removed at exit; the committed seeds are never written to)
#   CARGO_TARGET_DIR  where to build (default fuzz/target)
#
# cargo-fuzz passes -Z flags to rustc. The stable compiler accepts them with RUSTC_BOOTSTRAP=1,
# and the address sanitizer runtime ships with the stable std component on x86_64 Linux, so
# no nightly toolchain is needed (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it"
    cargo install --locked cargo-fuzz
fi

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
flags=(--release --debug-assertions --sanitizer "$sanitizer")

scratch=$(mktemp -d /tmp/nicproxy-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
corpora=${FUZZ_CORPUS:-$scratch/corpus}

echo "building fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build "${flags[@]}"

failed=0
printf '%-16s %12s %8s  %s\n' target executions seconds result
for t in $targets; do
    mkdir -p "$corpora/$t" fuzz/artifacts/"$t"
    extra=()
    [[ -f fuzz/dict/$t.dict ]] && extra+=("-dict=fuzz/dict/$t.dict")
    log=$scratch/$t.log
    t0=$(date +%s)
    # New inputs go to the first corpus directory: the scratch (or FUZZ_CORPUS) one.
    if cargo fuzz run "${flags[@]}" "$t" "$corpora/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${extra[@]}" >"$log" 2>&1; then
        result=ok
    else
        result="FAILED (see below)"
        failed=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    printf '%-16s %12s %8s  %s\n' "$t" "${execs:-?}" "$(( $(date +%s) - t0 ))" "$result"
    if [[ $result != ok ]]; then
        mkdir -p "fuzz/artifacts/$t"
        cp "$log" "fuzz/artifacts/$t/last-failure.log"
        echo "full log: fuzz/artifacts/$t/last-failure.log"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|Reproduce with|assertion' "$log" | head -n 20 || true
        tail -n 40 "$log"
    fi
done
exit "$failed"
