#!/usr/bin/env bash
# make fuzz: coverage-guided fuzzing (libFuzzer) of what a peer sends, built
# with AddressSanitizer (and LeakSanitizer):
#   loader   the destination's StreamLoader, fed like DestSession feeds it
#            (page data read straight into guest memory), two small heap
#            regions so any write outside them is caught
#   return   the return channel's frames (ReturnMessage.decode) and the
#            authenticated stream's sealed frames (StreamOpener)
# Each target runs FUZZ_SECONDS (default 60) from the corpus in fuzz/corpus
# (seeded from real streams by fuzz/make_seeds.c; new finds are merged back
# with FUZZ_MERGE=1). Exit 1 on any crash, sanitizer report or leak; prints
# executions per target and in total.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH
out=$root/build/fuzz
seconds=${FUZZ_SECONDS:-60}
mkdir -p "$out/module" "$out/obj"

# CShim as a Clang module for a plain swiftc build (SwiftPM makes this
# module map itself; the fuzz binaries are built outside SwiftPM because
# libFuzzer supplies main and wants every object instrumented).
cat >"$out/module/module.modulemap" <<MAP
module CShim {
    header "$root/Sources/CShim/include/cshim.h"
    export *
}
MAP
objs=()
for c in "$root"/Sources/CShim/*.c; do
    o=$out/obj/$(basename "$c" .c).o
    clang -O1 -g -fsanitize=address,fuzzer-no-link -I"$root/Sources/CShim/include" -c "$c" -o "$o"
    objs+=("$o")
done
mapfile -t swift_sources < <(find "$root/Sources/MigrationKit" -name '*.swift' | sort)

build() { # NAME TARGET-FILE
    swiftc -O -g -sanitize=fuzzer,address -parse-as-library -module-name MigrationKit \
        -I "$out/module" -Xcc -I"$root/Sources/CShim/include" \
        "${swift_sources[@]}" "$root/fuzz/$2" "${objs[@]}" -o "$out/fuzz_$1" 2>&1 | grep -v "Cannot export local symbol" || true
    [ -x "$out/fuzz_$1" ] || { echo "fuzz: building $1 failed" >&2; exit 1; }
}
build loader FuzzLoader.swift
build return FuzzReturn.swift

# A crash must end the run with libFuzzer's report, not wait in Swift's
# backtracer.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:allocator_may_return_null=1
total=0
failed=0
run() { # TARGET: one fuzzing run, its exit code in $out/TARGET.rc
    local t=$1 work=$out/corpus-$1
    mkdir -p "$work" "$out/artifacts"
    "$out/fuzz_$t" "$work" "$root/fuzz/corpus/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=262144 -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" >"$out/$t.log" 2>&1
    echo $? >"$out/$t.rc"
}
# FUZZ_PARALLEL=1: both targets at once (one core each).
for t in loader return; do
    echo "fuzz: $t for $seconds s (corpus fuzz/corpus/$t, log $out/$t.log)"
    if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then run "$t" & else run "$t"; fi
done
wait
for t in loader return; do
    work=$out/corpus-$t
    log=$out/$t.log
    rc=$(cat "$out/$t.rc")
    runs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    total=$((total + runs))
    if [ "$rc" != 0 ]; then
        failed=1
        echo "fuzz: $t FAILED (exit $rc) after $runs executions:"
        grep -m5 -E 'ERROR|SUMMARY|Fatal error|precondition|artifact' "$log" | sed 's/^/    /'
    else
        echo "fuzz: $t ok: $runs executions, $(grep -m1 -o 'cov: [0-9]*' "$log" | tail -1 || true), 0 crashes"
    fi
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
        "$out/fuzz_$t" -merge=1 "$root/fuzz/corpus/$t" "$work" >/dev/null 2>&1 || true
    fi
done
echo "fuzz: $total executions in total, $( [ $failed = 0 ] && echo "0 crashes, 0 sanitizer reports, 0 leaks" || echo FAILURES)"
exit $failed
