#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of the parsers an attacker reaches: token verification, canonical
# paths, the path carrier, Range headers and manifest rewriting. See fuzz/README.md.
#
# Usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#   FUZZ_TARGETS="range carrier"   only these targets (default: every target in fuzz/fuzz_targets/)
#   FUZZ_SANITIZER=address         build with ASan instead of the default `none` (a full rebuild, slower runs)
#   FUZZ_SEED=1                    a fixed libFuzzer seed: with a fresh corpus, the same inputs on every machine
#                                  for as long as the time lasts (what CI runs)
#
# Installs what is missing (a nightly toolchain, cargo-fuzz), seeds fuzz/corpus/<target>/ from testdata and sample
# manifests, replays fuzz/regressions/<target>/*, then fuzzes each target for SECONDS_PER_TARGET. Exits non-zero,
# naming the target and the crash file, if any input makes a target panic (a violated property is a panic).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
    exit 2
fi
sanitizer="${FUZZ_SANITIZER:-none}"
targets="${FUZZ_TARGETS:-$(cd fuzz/fuzz_targets && ls -- *.rs | sed 's/\.rs$//' | sort | tr '\n' ' ')}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "==> installing the nightly toolchain (libFuzzer instrumentation needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "==> seeding fuzz/corpus/"
python3 fuzz/seeds.py

echo "==> building every fuzz target (sanitizer: $sanitizer)"
build_start=$(date +%s)
(cd fuzz && cargo +nightly fuzz build -s "$sanitizer")
echo "    built in $(($(date +%s) - build_start)) s"

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
failed=()
summary=()

# The crash file libFuzzer reported in a log, if any.
crash_file() { grep -aoE '(Test unit written to|Failing input:) *[^ ]+' "$1" | tail -1 | awk '{print $NF}'; }

# Recorded inputs first: each file under fuzz/regressions/<target>/ is run once by the built target.
# cargo fuzz builds into $CARGO_TARGET_DIR when it is set (as cargo does), else into fuzz/target.
bindir="${CARGO_TARGET_DIR:-fuzz/target}/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
for t in $targets; do
    dir="fuzz/regressions/$t"
    [ -d "$dir" ] || continue
    pass=0
    fail=()
    for f in "$dir"/*; do
        [ -f "$f" ] || continue
        log="$logs/$t.regression.$(basename "$f").log"
        if "$bindir/$t" "$f" >"$log" 2>&1; then
            pass=$((pass + 1))
        else
            fail+=("$f")
            echo "!!! $t: recorded input $f still breaks a property:" >&2
            grep -a -m1 -E "property violated|panicked at" -A1 "$log" | grep -av "^thread" | head -1 | cut -c1-300 >&2 || true
        fi
    done
    if [ "${#fail[@]}" -eq 0 ]; then
        summary+=("$(printf '%-15s regressions: %d input(s) pass' "$t" "$pass")")
    else
        failed+=("$t (regressions)")
        summary+=("$(printf '%-15s REGRESSIONS FAIL: %d of %d recorded input(s) in %s still break a property' "$t" "${#fail[@]}" "$((pass + ${#fail[@]}))" "$dir")")
    fi
done

for t in $targets; do
    echo "==> fuzzing $t for $secs s"
    log="$logs/$t.log"
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
    set +e
    (cd fuzz && cargo +nightly fuzz run -s "$sanitizer" "$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 ${FUZZ_SEED:+-seed="$FUZZ_SEED"} "${dict[@]}") \
        >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -aoE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
    speed=$(grep -aoE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
    last=$(grep -aE '^#[0-9]+' "$log" | tail -1 || true)
    # A crashed run prints no final stats: its last status line says how far it got.
    [ -n "$runs" ] || runs=$(echo "$last" | grep -oE '^#[0-9]+' | tr -d '#' || true)
    cov=$(echo "$last" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+' || true)
    corp=$(echo "$last" | grep -oE 'corp: [0-9]+' | grep -oE '[0-9]+' || true)
    if [ "$rc" -ne 0 ] && grep -aq "failed to build fuzz script" "$log"; then
        # `cargo fuzz run` rebuilds first: a source tree broken mid-run is not a finding of the fuzzer.
        failed+=("$t (build)")
        summary+=("$(printf '%-15s BUILD FAILED (the tree changed since the build step?): %s' "$t" "$(grep -a -m1 '^error' "$log")")")
        echo "!!! $t: the target did not build; see $log" >&2
    elif [ "$rc" -eq 0 ]; then
        summary+=("$(printf '%-15s ok     execs=%-9s exec/s=%-7s cov=%-6s corpus=%s' "$t" "${runs:-?}" "${speed:-?}" "${cov:-?}" "${corp:-?}")")
    else
        crash=$(crash_file "$log" || true)
        failed+=("$t")
        summary+=("$(printf '%-15s CRASH  execs=%-9s crash file: %s (log %s)' "$t" "${runs:-?}" "${crash:-?}" "$log")")
        echo "!!! $t FOUND A CRASH (exit $rc): ${crash:-see $log}" >&2
        grep -a -m1 -E "property violated|panicked at" -A1 "$log" | grep -av "^thread" | head -1 | cut -c1-300 >&2 || true
        echo "    reproduce: (cd fuzz && cargo +nightly fuzz run -s $sanitizer $t ${crash:-<crash file>})" >&2
    fi
done

echo
echo "==> fuzz summary ($secs s per target, sanitizer $sanitizer)"
printf '    %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo
    echo "!!! FUZZING FAILED: ${failed[*]}" >&2
    echo "!!! crash inputs are under fuzz/artifacts/<target>/; full logs under $logs/" >&2
    exit 1
fi
