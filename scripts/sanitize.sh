#!/usr/bin/env bash
# make sanitize: the library under AddressSanitizer (+ LeakSanitizer, UBSan on
# the C side) and ThreadSanitizer.
#   1. the Swift tests, built with -sanitize=address, then -sanitize=thread
#      (SimMatrixTests skipped: the same engine code as the other
#      simulator tests, 96 runs that would take most of an hour under TSan);
#   2. the C tests (API robustness, return channel, authenticated streams)
#      and the in-process example, built with clang -fsanitize=address,undefined
#      against an ASan build of libmigrationkit.so.
# LeakSanitizer runs on step 2 only (see below why not on XCTest's runner).
# Each build has its own scratch directory (.build-asan, .build-tsan), so
# the normal .build is untouched. Exit 1 on any failure or sanitizer report.
# About 7 minutes on 2 shared cores once the sanitizer builds exist; the
# first run builds them (a few minutes more).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH
cd "$root"
# Reports must fail the run, and a crash must not wait in Swift's backtracer.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
failed=0
step() { echo; echo "== sanitize: $*"; }
mkdir -p build
start=$SECONDS

for s in address thread; do
    step "swift test --sanitize=$s"
    log=build/sanitize-swift-$s.log
    # swift test's own status, not the filter's: a build error or an
    # ordinary test failure must fail the run as surely as a report.
    rc=0
    # MK_SANITIZER_BUILD: swift test links the .so product too, which under
    # -z defs cannot leave the sanitizer runtime's symbols to the executable.
    # No leak check at the test runner's exit: swift-corelibs-xctest itself
    # leaks its run graph (a weak-reference side table allocated in
    # awaitUsingExpectation, and every XCTestCase, test run and suite run
    # in cycles, ~90 KB however few tests run), and no suppression pattern
    # tells its allocations from a test body's (every test runs beneath the
    # same XCTest frames). Leaks in the library are checked where it ships:
    # the C tests and the example below run against the optimized ASan
    # library with LeakSanitizer on, and SourceEngineLifetimeTests checks
    # the engine's lifetime with weak references.
    opts=$ASAN_OPTIONS
    [ "$s" = address ] && opts=${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}
    ASAN_OPTIONS=$opts MK_SANITIZER_BUILD=1 swift test --sanitize="$s" --scratch-path ".build-${s:0:1}san" --skip SimMatrixTests >"$log" 2>&1 || rc=$?
    grep -E "error:|WARNING: ThreadSanitizer|ERROR: AddressSanitizer|Executed [0-9]+ tests" "$log" | tail -n 20 || true
    if [ "$rc" != 0 ] || grep -qE "WARNING: ThreadSanitizer|ERROR: (Address|Leak)Sanitizer" "$log"; then
        echo "sanitize: swift tests under $s FAILED (exit $rc, $log)"
        failed=1
    fi
done

step "C tests against an ASan build of the library"
MK_SANITIZER_BUILD=1 swift build -c release --sanitize=address --scratch-path .build-asan --product migrationkit >&2
bin=$root/.build-asan/release
ln -sf libmigrationkit.so "$bin/libmigrationkit.so.0"
pc=$root/build/asan/pkgconfig
mkdir -p "$pc"
version=$(sed -n 's/^#define MK_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' include/migrationkit.h | paste -sd.)
sed -e "s|@prefix@|$root|" -e "s|@libdir@|$bin|" -e "s|@includedir@|$root/include|" \
    -e "s|@version@|$version|" -e "s|@extra_libs@| -Wl,-rpath,\${libdir}|" \
    pkgconfig/migrationkit.pc.in >"$pc/migrationkit.pc"
cflags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
# -B: the binaries must be rebuilt against this tree's library (an rpath
# into another checkout would test that one's).
if ! PKG_CONFIG_PATH=$pc make -B -s -C tests/c OUT=build-asan CC=clang CFLAGS="$cflags" check >build/sanitize-c.log 2>&1; then
    echo "sanitize: C tests under ASan FAILED (build/sanitize-c.log):"
    grep -E "ERROR|SUMMARY|FAIL" build/sanitize-c.log | head -20
    failed=1
else
    grep -E "checks|auth:|return_channel:" build/sanitize-c.log | sed 's/^/    /'
fi
if ! PKG_CONFIG_PATH=$pc CFLAGS="$cflags" make -s -C examples/c CC=clang clean run >build/sanitize-example.log 2>&1; then
    echo "sanitize: the in-process example under ASan FAILED (build/sanitize-example.log):"
    grep -E "ERROR|SUMMARY|FAIL|differ" build/sanitize-example.log | head -20
    failed=1
else
    echo "    in-process example: $(grep -c '^buffers EQUAL' build/sanitize-example.log) run(s) with memory equal"
fi
# The example's normal build is rebuilt by `make examples` (its Makefile
# tracks the staged header), so nothing sanitized is left behind there.
make -s -C examples/c clean >/dev/null
echo
echo "sanitize: took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
[ "$failed" = 0 ] && echo "sanitize: everything passed under ASan/UBSan and TSan" || echo "sanitize: FAILURES"
exit $failed
