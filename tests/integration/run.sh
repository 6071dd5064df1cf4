#!/usr/bin/env bash
# Integration tests for libmigrationkit with a real KVM guest.
#
# Every scenario runs two kvmhost processes (examples/c/kvmhost) that migrate
# a running guest over a real socket, and checks what both sides report:
#   1 idle 1 GiB guest over TCP loopback
#   2 512 MiB guest dirtying 64 MiB at a moderate rate, downtime-limit 300 ms
#     (and its --timeline chart, checked by check_timeline.py)
#   3 forced non-convergence, then raising the limits while it runs
#   4 auto-converge against a bandwidth cap (timeline chart: throttle visible)
#   5 cancel in the middle
#   6 destination killed mid-stream
#   7 two vCPUs, one dirtying and one computing
#   8 two network namespaces joined by a veth pair capped at 1 Gbit/s (tbf)
#   9 (extra) a working-set counter damaged on the destination: the check
#     before resume fails, the destination NACKs, the source keeps its guest
#  10 idle-zero: 1 GiB, 64 MiB working set at 1 MiB/s, rest zero
#  11 paced: 1 GiB, 512 MiB working set at 50 MiB/s, max-bandwidth 100M, rest zero
#  12 (extra) a byte the guest never writes damaged on the destination: found
#     by the check after resume (the source has handed over): destination fails
#  13 per-vCPU throttle: 1 GiB, 2 vCPUs, vCPU 0 writes 512 MiB flat out, vCPU 1
#     computes 100 %, max-bandwidth 100M, auto-converge closed-loop on the KVM
#     dirty ring: converges, only vCPU 0 is throttled, vCPU 1 keeps >= 80 % of
#     its speed before, every vCPU unthrottled after completion
#  14 the same, cancelled while throttled: every vCPU unthrottled, both back
#     to speed
#  15 dirty ring under pressure: the same guest with a 4096-entry ring and the
#     step controller (kicks while vCPUs harvest after ring-full exits):
#     hundreds of ring-full exits, memory verified on the destination
#  16 authenticated stream: the same key file on both sides migrates and
#     verifies; then a destination with another key refuses the stream
#     (MK_EAUTH) and the source's guest runs on, healthy
#
# Every scenario that converges asserts its downtime (see downtime_checks).
#
# Usage: tests/integration/run.sh [N ...]    (default: all)
# Env:   PKG_CONFIG_PATH  where migrationkit.pc is (default: the SwiftPM release dir)
#        OUT              directory for logs and JSON (default: a new /tmp dir)
# Prints PASS / FAIL / SKIPPED per scenario. Exit: 0 nothing failed, 1 some
# scenario FAILed, 77 everything SKIPPED (no usable /dev/kvm: nothing was
# tested, said loudly per scenario). A scenario that cannot run here (8 without
# network namespaces) is SKIPPED loudly and does not fail the suite.

set -u
. "$(dirname "$0")/lib.sh"

OUT=${OUT:-$(mktemp -d /tmp/mk-integration.XXXXXX)}
mkdir -p "$OUT"
SELECTED=("$@")
[ ${#SELECTED[@]} -eq 0 ] && SELECTED=(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
NAMES=([1]=idle-1g-tcp [2]=dirty-512m-converge [3]=non-convergence-then-raise [4]=auto-converge
       [5]=cancel-midway [6]=destination-killed [7]=two-vcpus-dirty-compute [8]=netns-veth-1gbit
       [9]=damaged-page-nack [10]=idle-zero [11]=paced [12]=damaged-pattern-after-resume
       [13]=per-vcpu-throttle [14]=per-vcpu-throttle-cancel [15]=dirty-ring-full
       [16]=authenticated)
declare -A RESULT DETAIL
FAILED=0

line() { printf '%s\n' "################################################################################"; }
report() { # STATUS N DETAILS
    local st=$1 n=$2 det=$3
    RESULT[$n]=$st
    DETAIL[$n]=$det
    echo
    line
    printf '###  %-8s %s  %s\n' "$st" "$n" "${NAMES[$n]}"
    printf '###  %s\n' "$det"
    line
    echo
    [ "$st" = FAIL ] && FAILED=1
    return 0
}

# ---- per-scenario state ----
FAILS=()
check() { # CONDITION-RESULT(0/1) MESSAGE
    if [ "$1" != 0 ]; then FAILS+=("$2"); fi
}
is() { [ "$1" = "$2" ] && echo 0 || echo 1; }
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 > b + 0) }' && echo 0 || echo 1; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }' && echo 0 || echo 1; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }' && echo 0 || echo 1; }

DEST_PREFIX=()
SRC_PREFIX=()
start_dest() { # NAME ARGS...
    local name=$1
    shift
    DLOG=$OUT/$name.dst.log
    DJSON=$OUT/$name.dst.json
    rm -f "$DJSON"
    "${DEST_PREFIX[@]}" "$KVMHOST" "$@" --stats-json "$DJSON" >"$DLOG" 2>&1 &
    DPID=$!
    wait_for_line "$DLOG" "listening on" 20 || true
}
run_src() { # NAME TIMEOUT ARGS...
    local name=$1 to=$2
    shift 2
    SLOG=$OUT/$name.src.log
    SJSON=$OUT/$name.src.json
    rm -f "$SJSON"
    timeout -k 5 "$to" "${SRC_PREFIX[@]}" "$KVMHOST" "$@" --stats-json "$SJSON" --progress plain >"$SLOG" 2>&1
    SRC_RC=$?
}
finish() { # N DETAILS-ON-PASS
    local n=$1 det=$2
    if [ ${#FAILS[@]} -eq 0 ]; then
        report PASS "$n" "$det"
    else
        local why
        why=$(printf '%s; ' "${FAILS[@]}")
        report FAIL "$n" "$why -- logs: $OUT/t$n.*"
    fi
}
numbers() { # summary of a completed migration from both JSON files
    printf 'total %s ms, downtime end-to-end %s ms (library %s ms), expected at switchover %s ms, limit %s ms, sent %s MiB, passes %s, syncs %s, bandwidth %s MB/s (%s)' \
        "$(jget "$SJSON" .host.total_time_ms)" "$(jget "$DJSON" '.host.downtime_e2e_ms')" \
        "$(jget "$SJSON" .host.downtime_ms)" "$(jget "$SJSON" '.host.expected_downtime_us / 1000')" \
        "$(jget "$SJSON" .host.downtime_limit_ms)" \
        "$(jget "$SJSON" '(.host.transferred / 1048576 * 10 | floor) / 10')" \
        "$(jget "$SJSON" .host.passes)" "$(jget "$SJSON" .host.dirty_sync_count)" \
        "$(jget "$SJSON" '(.host.bandwidth_estimate / 100000 | floor) / 10')" "$(jget "$SJSON" .host.bandwidth_source)"
}
# The downtime of a completed migration. Actual = what the guest sees: source
# vCPU pause -> destination vCPU resume (destination JSON, downtime_e2e_ms;
# both clocks are CLOCK_MONOTONIC on this machine). Expected = the library's
# prediction at switchover (source JSON, expected_downtime_us: the sum of its
# parts). Must hold: actual <= downtime-limit, and
#   actual - expected <= max(50 % of actual, 25 ms)    (under-prediction)
#   expected - actual <= max(100 % of actual, 50 ms)   (over-prediction)
# -- loose on purpose: this is a noisy, shared 2-core machine, and a test must
# not flake. Over-prediction is the safe side (it costs total time, never
# downtime) and is the usual error under auto-converge: live rates are
# measured with the vCPUs competing for the two cores, the stop-and-copy runs
# with them paused (stop-and-copy rates of 1.6-2.5 GB/s for the same
# scenario from run to run). The tight figures (10 %, 5 ms, per-scenario
# targets) belong to the benchmark, bench/downtime.sh.
downtime_checks() {
    local act exp lim tol
    act=$(jget "$DJSON" .host.downtime_e2e_ms)
    exp=$(jget "$SJSON" '.host.expected_downtime_us / 1000')
    lim=$(jget "$SJSON" .host.downtime_limit_ms)
    tol=$(awk -v a="$act" 'BEGIN { t = a * 0.5; if (t < 25) t = 25; print t }')
    check "$(gt "$act" 0)" "no measured downtime"
    check "$(le "$act" "$lim")" "downtime $act ms above downtime-limit $lim ms"
    # With the guest paused, both ends' threads may still wait for a CPU (a
    # busy host): the stats say how long, where the kernel keeps schedstat,
    # and it can only be part of the downtime.
    if [ -r /proc/thread-self/schedstat ]; then
        local sw dw dt
        sw=$(jget "$SJSON" .host.stop_cpu_wait_us)
        dw=$(jget "$DJSON" .dest.stopped_cpu_wait_us)
        dt=$(jget "$SJSON" .host.downtime_us)
        check "$(is "$([[ $sw =~ ^[0-9]+$ && $dw =~ ^[0-9]+$ ]] && echo y)" y)" "CPU wait not reported (source $sw, destination $dw)"
        check "$(le "$sw" "$dt")" "source CPU wait $sw us longer than the downtime $dt us"
        check "$(le "$dw" "$dt")" "destination CPU wait $dw us longer than the downtime $dt us"
    fi
    # With avail-switchover-bandwidth set, the prediction is the user's
    # figure by definition (scenario 4 sets it to the cap): only the limit
    # is checked then.
    if [ "$(jget "$SJSON" '.migration["switchover-source"]')" = override ]; then
        echo "    (expected $exp ms from the user's avail-switchover-bandwidth; actual $act ms)"
        return 0
    fi
    check "$(le "$(awk -v a="$act" -v e="$exp" 'BEGIN { print a - e }')" "$tol")" \
        "expected downtime $exp ms vs actual $act ms: under by more than $tol ms"
    local over
    over=$(awk -v a="$act" 'BEGIN { t = a; if (t < 50) t = 50; print t }')
    check "$(le "$(awk -v a="$act" -v e="$exp" 'BEGIN { print e - a }')" "$over")" \
        "expected downtime $exp ms vs actual $act ms: over by more than $over ms"
}
# kvmhost --timeline: the SVG parses, one series per quantity, axis labels,
# switchover and measured downtime marked (tests/integration/check_timeline.py).
timeline_checks() { # FILE [--throttle]
    local out
    out=$(python3 "$(dirname "$0")/check_timeline.py" "$@" 2>&1) || FAILS+=("timeline chart: $(echo "$out" | tr '\n' ' ')")
}
expected_parts() { # the library's expected-downtime parts, ms
    jget "$SJSON" '.host.expected | if . == null then "expected parts not reported" else
        "expected parts: RAM \(.ram_us / 1000) + backlog \(.backlog_us / 1000) + device \(.device_us / 1000) + dest \(.dest_us / 1000) + fixed \(.fixed_us / 1000) ms (margin \(.margin_us / 1000)), reason \(.switchover_reason)" end'
}
common_completed_checks() {
    check "$(is "$SRC_RC" 0)" "source exit $SRC_RC (want 0)"
    check "$(is "$DRC" 0)" "destination exit $DRC (want 0)"
    check "$(is "$(jget "$SJSON" .result)" completed)" "source result $(jget "$SJSON" .result)"
    check "$(is "$(jget "$DJSON" .host.verify.ok)" true)" "memory verification: $(jget "$DJSON" .host.verify.msg)"
    check "$(is "$(jget "$DJSON" .host.verify_end.ok)" true)" "invariant after running on the destination: $(jget "$DJSON" .host.verify_end.msg)"
    grep -q "CONTINUED from where it was paused" "$DLOG" || FAILS+=("guest did not continue on the destination")
    downtime_checks
}

# ---------------------------------------------------------------------------

t1() {
    local port
    port=$(free_port)
    start_dest t1 --incoming "tcp:127.0.0.1:$port" --mem 1G --working-set 0 --run-after-seconds 1
    run_src t1 120 --mem 1G --working-set 0 --migrate "tcp:127.0.0.1:$port" --migrate-after 0.5
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    check "$(gt "$(jget "$DJSON" .host.verify.static_pages)" 200000)" "static area not verified"
    check "$(is "$(jget "$DJSON" .host.verify.static_bad)" 0)" "static area corrupt"
    finish 1 "$(numbers); $(jget "$DJSON" .host.verify.static_pages) pages verified"
}

t2() {
    local port
    port=$(free_port)
    start_dest t2 --incoming "tcp:127.0.0.1:$port" --mem 512M --working-set 64M --run-after-seconds 1
    run_src t2 120 --mem 512M --working-set 64M --dirty-rate 32M --downtime-limit 300 \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 1 --timeline "$OUT/t2.timeline.svg"
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    timeline_checks "$OUT/t2.timeline.svg"
    finish 2 "$(numbers)"
}

t3() {
    local port
    port=$(free_port)
    start_dest t3 --incoming "tcp:127.0.0.1:$port" --mem 256M --working-set 8M --run-after-seconds 1
    # QEMU's migrate_ensure_non_converge / _converge: 3 MB/s + 1 ms, then 1 GB/s + 30 s.
    run_src t3 120 --mem 256M --fill zero --working-set 8M --dirty-rate 0 \
        --max-bandwidth 3000000 --downtime-limit 1 \
        --set-param-at 8 max-bandwidth=1000000000 --set-param-at 8 downtime-limit=30000 \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 0.5
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    local reports active_before why
    reports=$(jget "$SJSON" .host.not_converging_reports)
    check "$(gt "$reports" 0)" "never said why it was not converging"
    # progress lines look like "[   5.1s] active    pass 0 ... | not converging: ..."
    active_before=$(sed -nE 's/^\[ *([0-9.]+)s\] +active .*not converging.*/\1/p' "$SLOG" |
        awk '$1 >= 4 && $1 < 8 { n++ } END { print n + 0 }')
    check "$(gt "$active_before" 0)" "was not active and not converging between 4 s and 8 s"
    check "$(is "$(jget "$SJSON" '[.host.param_changes[].rc] | map(select(. != 0)) | length')" 0)" "a parameter change was refused"
    check "$(gt "$(jget "$SJSON" .host.total_time_ms)" 8000)" "completed before the limits were raised"
    why=$(grep -m1 -o 'not converging: [^|]*' "$SLOG" | head -c 160)
    finish 3 "active with $reports not-converging reports until the flip at 8 s ('$why'), then $(numbers)"
}

t4() {
    local port
    port=$(free_port)
    start_dest t4 --incoming "tcp:127.0.0.1:$port" --mem 256M --working-set 64M --run-after-seconds 1
    run_src t4 150 --mem 256M --fill zero --working-set 64M --dirty-rate 100M \
        --max-bandwidth 40M --avail-switchover-bandwidth 40M --downtime-limit 300 --auto-converge on \
        --cpu-throttle-initial 30 --cpu-throttle-increment 20 \
        --completion-timeout 90000 --timeout-strategy cancel \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 0.5 --timeline "$OUT/t4.timeline.svg"
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    timeline_checks "$OUT/t4.timeline.svg" --throttle
    local maxt fin libt
    maxt=$(jget "$SJSON" .host.max_throttle_pct)
    fin=$(jget "$SJSON" .host.final_throttle_pct)
    libt=$(jget "$SJSON" '.migration["cpu-throttle-percentage"] // .migration.ram["cpu-throttle-percentage"] // 0')
    check "$(gt "$maxt" 0)" "throttle never above 0 (max $maxt)"
    check "$(is "$fin" 0)" "throttle after completion $fin (want 0)"
    check "$(is "$libt" 0)" "library JSON cpu-throttle-percentage $libt after completion"
    local during
    during=$(jget "$SJSON" '.host.guest_at_pause[0].work - .host.guest_before[0]')
    check "$(gt "$during" 0)" "guest made no progress during the migration"
    finish 4 "throttle max ${maxt}% during the run, ${fin}% after; guest wrote $during pages while throttled; $(numbers)"
}

t5() {
    local port
    port=$(free_port)
    start_dest t5 --incoming "tcp:127.0.0.1:$port" --mem 256M
    run_src t5 120 --mem 256M --fill zero --working-set 32M --dirty-rate 100M \
        --max-bandwidth 8M --downtime-limit 1 --auto-converge on --cpu-throttle-initial 40 \
        --cancel-after 5 --after-fail-seconds 2 \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 0.5
    wait_pid "$DPID" 30; DRC=$WAIT_RC
    check "$(is "$SRC_RC" 3)" "source exit $SRC_RC (want 3 = cancelled, guest healthy)"
    check "$(is "$(jget "$SJSON" .result)" cancelled)" "source result $(jget "$SJSON" .result)"
    check "$(is "$(jget "$SJSON" .host.guest_healthy_after)" true)" "source guest not healthy: $(jget "$SJSON" .host.guest_health)"
    check "$(is "$(jget "$SJSON" .host.final_throttle_pct)" 0)" "throttle still $(jget "$SJSON" .host.final_throttle_pct)% after cancel"
    local rate want
    rate=$(jget "$SJSON" '.host.guest_rate_after[0]')
    want=$(jget "$SJSON" '.host.dirty_rate_pages_per_s')
    check "$(ge "$rate" "$(awk -v w="$want" 'BEGIN { print w * 0.8 }')")" "guest rate after cancel $rate pages/s < 80% of $want (still throttled?)"
    check "$(is "$DRC" 2)" "destination exit $DRC (want 2)"
    grep -q "INCOMING MIGRATION FAILED" "$DLOG" || FAILS+=("destination gave no clear error")
    local derr
    derr=$(grep -m1 -o "INCOMING MIGRATION FAILED[^(]*" "$DLOG" | head -c 140)
    finish 5 "cancelled at $(jget "$SJSON" .host.cancel_t) s (throttle had reached $(jget "$SJSON" .host.max_throttle_pct)%); source guest: $(jget "$SJSON" .host.guest_health | head -c 160); destination: '$derr'"
}

t6() {
    local port
    port=$(free_port)
    start_dest t6 --incoming "tcp:127.0.0.1:$port" --mem 512M
    local victim=$DPID
    ( sleep 3; kill -9 "$victim" 2>/dev/null ) &
    local killer=$!
    run_src t6 120 --mem 512M --working-set 64M --dirty-rate 50M --max-bandwidth 30M \
        --after-fail-seconds 2 --migrate "tcp:127.0.0.1:$port" --migrate-after 0.5
    wait "$killer" 2>/dev/null
    wait_pid "$DPID" 10; DRC=$WAIT_RC
    check "$(is "$SRC_RC" 2)" "source exit $SRC_RC (want 2 = failed, guest healthy)"
    check "$(is "$(jget "$SJSON" .result)" failed)" "source result $(jget "$SJSON" .result)"
    check "$(is "$(jget "$SJSON" .host.guest_healthy_after)" true)" "source guest not healthy: $(jget "$SJSON" .host.guest_health)"
    check "$(is "$(jget "$SJSON" .host.final_throttle_pct)" 0)" "throttle not 0 after the failure"
    finish 6 "destination killed (exit $DRC); source: $(jget "$SJSON" .error) after $(jget "$SJSON" .host.total_time_ms) ms, '$(jget "$SJSON" '.error_msg // ""' | head -c 100)'; guest $(jget "$SJSON" .host.guest_health | head -c 160)"
}

t7() {
    local port
    port=$(free_port)
    start_dest t7 --incoming "tcp:127.0.0.1:$port" --mem 512M --vcpus 2 --working-set 64M --run-after-seconds 1
    run_src t7 120 --mem 512M --vcpus 2 --dirtiers 0 --working-set 64M --dirty-rate 50M \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 1
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    check "$(is "$(jget "$SJSON" '.host.guest_at_pause | length')" 2)" "source snapshot does not have 2 vCPUs"
    check "$(is "$(jget "$SJSON" '.host.guest_at_pause[1].role')" compute)" "vCPU 1 is not computing"
    grep -q "v1 compute .*LCG state consistent" "$DLOG" || FAILS+=("compute vCPU state not verified on the destination")
    local c
    c=$(grep -m1 -o "v0 dirty work [0-9]* at pause -> [0-9]* now[^;]*; v1 compute work [0-9]* at pause -> [0-9]* now" "$DLOG")
    finish 7 "$c; $(numbers)"
}

t8() {
    t8_body
    netns_down
}

t8_body() {
    local port
    if ! netns_up "$OUT/t8.netns.err"; then
        report SKIPPED 8 "$NETNS_WHY: NETWORK NAMESPACE TEST NOT RUN"
        return
    fi
    # a real 1 Gbit/s bottleneck, both directions
    if ! netns_tbf 1gbit "$OUT/t8.tc.err"; then
        report FAIL 8 "tc tbf failed: $(head -c 160 "$OUT/t8.tc.err")"
        return
    fi
    port=4444
    DEST_PREFIX=(ip netns exec "$NS_D")
    SRC_PREFIX=(ip netns exec "$NS_S")
    start_dest t8 --incoming "tcp:10.231.7.2:$port" --mem 512M --working-set 64M --run-after-seconds 1
    run_src t8 150 --mem 512M --working-set 64M --dirty-rate 20M --downtime-limit 300 \
        --migrate "tcp:10.231.7.2:$port" --migrate-after 0.5
    DEST_PREFIX=()
    SRC_PREFIX=()
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    local bw mbps
    bw=$(jget "$SJSON" .host.bandwidth_estimate)
    mbps=$(jget "$SJSON" '.migration.ram.mbps // 0')
    check "$(le "$bw" 140000000)" "bandwidth estimate $bw B/s above the 1 Gbit/s cap"
    check "$(gt "$bw" 20000000)" "bandwidth estimate $bw B/s implausibly low for 1 Gbit/s"
    finish 8 "namespaces $NS_S/$NS_D, veth 10.231.7.1 -> 10.231.7.2, tbf 1gbit; throughput $mbps Mbit/s; $(numbers)"
}

t9() {
    local port
    port=$(free_port)
    start_dest t9 --incoming "tcp:127.0.0.1:$port" --mem 256M --working-set 16M --corrupt-after-load
    run_src t9 120 --mem 256M --working-set 16M --dirty-rate 10M --after-fail-seconds 1 \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 0.5
    wait_pid "$DPID" 30; DRC=$WAIT_RC
    check "$(is "$DRC" 1)" "destination exit $DRC (want 1 = verification failed)"
    grep -q "MEMORY VERIFICATION FAILED" "$DLOG" || FAILS+=("destination did not detect the damaged page")
    check "$(is "$SRC_RC" 2)" "source exit $SRC_RC (want 2 = failed, guest healthy)"
    check "$(is "$(jget "$SJSON" .error)" "the destination reported a failure")" "source error '$(jget "$SJSON" .error)'"
    check "$(is "$(jget "$SJSON" .host.guest_healthy_after)" true)" "source guest not healthy"
    finish 9 "destination: '$(grep -m1 -o 'MEMORY VERIFICATION FAILED.*' "$DLOG" | head -c 100)'; source: '$(jget "$SJSON" .error)', guest $(jget "$SJSON" .host.guest_health | head -c 120)"
}

t10() {
    local port
    port=$(free_port)
    start_dest t10 --incoming "tcp:127.0.0.1:$port" --mem 1G --working-set 64M --run-after-seconds 1
    run_src t10 120 --mem 1G --working-set 64M --dirty-rate 1M --fill zero --downtime-limit 300 \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 1
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    finish 10 "$(numbers); $(expected_parts)"
}

t11() {
    local port
    port=$(free_port)
    start_dest t11 --incoming "tcp:127.0.0.1:$port" --mem 1G --working-set 512M --run-after-seconds 1
    run_src t11 150 --mem 1G --working-set 512M --dirty-rate 50M --max-bandwidth 100M --fill zero \
        --downtime-limit 300 --migrate "tcp:127.0.0.1:$port" --migrate-after 1
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    finish 11 "$(numbers); $(expected_parts)"
}

t12() {
    local port
    port=$(free_port)
    start_dest t12 --incoming "tcp:127.0.0.1:$port" --mem 256M --working-set 16M --corrupt-pattern-after-load
    run_src t12 120 --mem 256M --working-set 16M --dirty-rate 10M \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 0.5
    wait_pid "$DPID" 30; DRC=$WAIT_RC
    check "$(is "$DRC" 1)" "destination exit $DRC (want 1 = verification failed)"
    grep -q "MEMORY VERIFICATION FAILED (after resume" "$DLOG" || FAILS+=("destination did not detect the damaged byte after resume")
    check "$(is "$(jget "$DJSON" .result)" verify-failed-after-resume)" "destination result $(jget "$DJSON" .result)"
    check "$(is "$(jget "$DJSON" .host.verify_before_resume.ok)" true)" "the check before resume failed (it must not see this byte)"
    check "$(is "$SRC_RC" 0)" "source exit $SRC_RC (want 0: it handed over before the damage could be found)"
    finish 12 "destination: '$(grep -m1 -o 'MEMORY VERIFICATION FAILED.*' "$DLOG" | head -c 140)'"
}

t16() {
    local port ok_numbers
    head -c 32 /dev/urandom >"$OUT/t16.key"
    head -c 32 /dev/urandom >"$OUT/t16.other.key"
    port=$(free_port)
    start_dest t16 --incoming "tcp:127.0.0.1:$port" --mem 256M --working-set 32M --run-after-seconds 1 \
        --auth-key-file "$OUT/t16.key"
    run_src t16 120 --mem 256M --working-set 32M --dirty-rate 16M --downtime-limit 300 \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 0.5 --auth-key-file "$OUT/t16.key"
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    ok_numbers=$(numbers)
    # Another key on the destination: refused before any page is loaded.
    port=$(free_port)
    start_dest t16-wrong --incoming "tcp:127.0.0.1:$port" --mem 256M --working-set 32M \
        --auth-key-file "$OUT/t16.other.key"
    run_src t16-wrong 120 --mem 256M --working-set 32M --dirty-rate 16M --after-fail-seconds 1 \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 0.5 --auth-key-file "$OUT/t16.key"
    wait_pid "$DPID" 30; DRC=$WAIT_RC
    check "$(is "$SRC_RC" 2)" "wrong key: source exit $SRC_RC (want 2 = failed, guest healthy)"
    check "$(is "$(jget "$SJSON" .host.guest_healthy_after)" true)" "wrong key: source guest not healthy after the refusal"
    grep -q "stream authentication failed" "$SLOG" "$DLOG" || FAILS+=("wrong key: no 'stream authentication failed' in either log")
    check "$(gt "$DRC" 0)" "wrong key: destination exit $DRC (want a failure)"
    finish 16 "$ok_numbers; wrong key: source '$(jget "$SJSON" .error)', destination '$(grep -m1 -o 'failed its MAC[^;]*' "$DLOG" | head -c 80)'"
}

# The issue's scenario: one vCPU dirties flat out, one computes.
THROTTLE_GUEST=(--mem 1G --vcpus 2 --dirtiers 0 --compute-duty 100 --working-set 512M --fill zero)
THROTTLE_PARAMS=(--max-bandwidth 100M --auto-converge on --throttle-mode closed-loop --cpu-throttle-initial 20
                 --cpu-throttle-increment 10 --cpu-throttle-tailslow off --downtime-limit 300 --speed-window 1)
throttle_checks() { # what both throttle scenarios assert about the vCPUs
    check "$(is "$(jget "$SJSON" .host.dirty_log.mode)" ring)" "dirty log mode $(jget "$SJSON" .host.dirty_log.mode) (want the KVM dirty ring)"
    check "$(is "$(jget "$SJSON" .host.throttle_mode)" closed-loop)" "throttle mode $(jget "$SJSON" .host.throttle_mode)"
    check "$(gt "$(jget "$SJSON" '.host.vcpu_final[0].max_throttle_pct')" 0)" "the writing vCPU 0 was never throttled"
    check "$(is "$(jget "$SJSON" '.host.vcpu_final[1].max_throttle_pct')" 0)" "the computing vCPU 1 was throttled ($(jget "$SJSON" '.host.vcpu_final[1].max_throttle_pct')%)"
    check "$(is "$(jget "$SJSON" '.host.vcpu_final[1].throttle_sleep_us')" 0)" "the computing vCPU 1 slept $(jget "$SJSON" '.host.vcpu_final[1].throttle_sleep_us') us in the throttle"
    check "$(gt "$(jget "$SJSON" '.host.vcpu_final[0].throttle_sleep_us')" 0)" "the writing vCPU 0 never slept in the throttle"
    check "$(is "$(jget "$SJSON" .host.vcpu_final[0].dirty_rate_known)" true)" "no per-vCPU dirty counts"
    check "$(ge "$(jget "$SJSON" '.host.vcpu_final[1].speed_fraction')" 0.8)" "computing vCPU ran at $(jget "$SJSON" '.host.vcpu_final[1].speed_fraction') of its speed before (want >= 0.8)"
    check "$(is "$(jget "$SJSON" '[.host.vcpu_final[].throttle_pct] | max')" 0)" "a vCPU still throttled after $(jget "$SJSON" .result): $(jget "$SJSON" '[.host.vcpu_final[].throttle_pct]')"
    check "$(is "$(jget "$SJSON" .host.final_throttle_pct)" 0)" "cpu-throttle-percentage $(jget "$SJSON" .host.final_throttle_pct) after $(jget "$SJSON" .result)"
    check "$(is "$(jget "$SJSON" '[.migration.vcpus[]["cpu-throttle-percentage"]] | max')" 0)" "library JSON: a vCPU throttled after $(jget "$SJSON" .result)"
}
throttle_numbers() {
    jget "$SJSON" '(if .host.time_to_converge_ms > 0 then "converged in \(.host.time_to_converge_ms / 100 | floor / 10) s" else "did not switch over" end) + "; vCPU speed during / before: " + ([.host.vcpu_final[] | "\(.speed_fraction * 1000 | floor / 10)%"] | join(", ")) + "; max throttle per vCPU " + ([.host.vcpu_final[] | "\(.max_throttle_pct)%"] | join(", ")) + "; throttle sleep \(.host.throttle_sleep_us / 1000 | floor) vCPU-ms"'
}

t13() {
    local port
    port=$(free_port)
    start_dest t13 --incoming "tcp:127.0.0.1:$port" --mem 1G --vcpus 2 --working-set 512M --run-after-seconds 1
    run_src t13 150 "${THROTTLE_GUEST[@]}" "${THROTTLE_PARAMS[@]}" \
        --migrate "tcp:127.0.0.1:$port" --migrate-after 1
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    throttle_checks
    check "$(ge "$(jget "$SJSON" .host.time_to_converge_ms)" 0)" "no switchover time"
    finish 13 "$(throttle_numbers); $(numbers)"
}

t14() {
    local port
    port=$(free_port)
    start_dest t14 --incoming "tcp:127.0.0.1:$port" --mem 1G --vcpus 2
    # downtime-limit 1 ms: it never converges; cancelled while vCPU 0 is
    # throttled: the closed loop leaves the first pass alone, then acts
    # within a control period (0.5 s), so 2 s after that pass
    run_src t14 120 "${THROTTLE_GUEST[@]}" "${THROTTLE_PARAMS[@]}" --downtime-limit 1 \
        --cancel-at pass:1+2000 --after-fail-seconds 2 --migrate "tcp:127.0.0.1:$port" --migrate-after 1
    wait_pid "$DPID" 30; DRC=$WAIT_RC
    check "$(is "$SRC_RC" 3)" "source exit $SRC_RC (want 3 = cancelled, guest healthy)"
    check "$(is "$(jget "$SJSON" .result)" cancelled)" "source result $(jget "$SJSON" .result)"
    check "$(is "$(jget "$SJSON" .host.guest_healthy_after)" true)" "source guest not healthy: $(jget "$SJSON" .host.guest_health)"
    throttle_checks
    # Unthrottled after the cancel: in the 2 s the host then watches the
    # guest, no vCPU is kicked or sleeps in the throttle point, and the
    # computing vCPU runs at >= 80 % of its speed before. (The writer's speed
    # is no measure here: after a dirty-ring migration the kernel re-faults
    # its pages for a while, throttle or not -- 84 k to 560 k pages/s against
    # 10 M before, measured with auto-converge off.)
    check "$(is "$(jget "$SJSON" '.host.throttle_during_check.kicks | add')" 0)" "vCPUs kicked after the cancel: $(jget "$SJSON" '.host.throttle_during_check.kicks')"
    check "$(is "$(jget "$SJSON" '.host.throttle_during_check.throttle_us | add')" 0)" "vCPUs slept in the throttle after the cancel: $(jget "$SJSON" '.host.throttle_during_check.throttle_us') us"
    local before after
    before=$(jget "$SJSON" ".host.vcpu_final[1].speed_before")
    after=$(jget "$SJSON" ".host.guest_rate_after[1]")
    check "$(ge "$after" "$(awk -v b="$before" 'BEGIN { print b * 0.8 }')")" "computing vCPU runs at $after/s after the cancel, < 80% of $before/s before"
    finish 14 "cancelled at $(jget "$SJSON" .host.cancel_t) s; $(throttle_numbers); after the cancel: kicks $(jget "$SJSON" '.host.throttle_during_check.kicks | tostring'), speed / before: $(jget "$SJSON" '[range(0; 2) as $i | "\((.host.guest_rate_after[$i] / .host.vcpu_final[$i].speed_before * 1000 | floor) / 10)%"] | join(", ")')"
}

t15() {
    local port
    port=$(free_port)
    start_dest t15 --incoming "tcp:127.0.0.1:$port" --mem 1G --vcpus 2 --working-set 512M --run-after-seconds 1
    # A small ring fills every few ms; the step controller kicks both vCPUs,
    # so the vCPU that harvests after a ring-full exit is often signalled
    # meanwhile. A reset cut short by that signal lost dirty pages (the
    # destination's memory check failed in 5 of 5 runs before the fix).
    KVMHOST_RING_BYTES=65536 run_src t15 150 "${THROTTLE_GUEST[@]}" --dirty-log ring --max-bandwidth 100M \
        --auto-converge on --throttle-mode step --downtime-limit 300 --migrate "tcp:127.0.0.1:$port" --migrate-after 1
    wait_pid "$DPID" 60; DRC=$WAIT_RC
    common_completed_checks
    check "$(is "$(jget "$SJSON" .host.dirty_log.ring_entries)" 4096)" "ring of $(jget "$SJSON" .host.dirty_log.ring_entries) entries (want 4096)"
    check "$(gt "$(jget "$SJSON" .host.dirty_log.ring_full_exits)" 20)" "only $(jget "$SJSON" .host.dirty_log.ring_full_exits) ring-full exits: the ring was not under pressure"
    finish 15 "ring 4096 entries, $(jget "$SJSON" .host.dirty_log.ring_full_exits) ring-full exits, $(jget "$SJSON" .host.dirty_log.ring_harvested) entries harvested; $(numbers)"
}

# ---------------------------------------------------------------------------

echo "kvmhost integration tests; logs and JSON in $OUT"
if ! have_kvm; then
    for n in "${SELECTED[@]}"; do
        report SKIPPED "$n" "NO USABLE /dev/kvm ON THIS MACHINE: THE REAL-KVM TEST WAS NOT RUN"
    done
    echo "SKIPPED: all scenarios (no /dev/kvm). Nothing was tested."
    exit 77
fi
if ! command -v jq >/dev/null; then
    echo "jq is needed to read the JSON statistics" >&2
    exit 1
fi
if ! build_host; then
    for n in "${SELECTED[@]}"; do
        report FAIL "$n" "cannot build examples/c/kvmhost against libmigrationkit"
    done
    exit 1
fi
echo "library: $(pkg-config --variable=libdir migrationkit)/libmigrationkit.so ($(pkg-config --modversion migrationkit))"
if ! "$KVMHOST" --probe >"$OUT/probe.log" 2>&1; then
    for n in "${SELECTED[@]}"; do
        report SKIPPED "$n" "/dev/kvm CANNOT RUN THE GUEST HERE ($(tail -1 "$OUT/probe.log")): THE REAL-KVM TEST WAS NOT RUN"
    done
    echo "SKIPPED: all scenarios (KVM unusable). Nothing was tested."
    exit 77
fi

trap netns_down EXIT
SUITE_T0=$(date +%s)
for n in "${SELECTED[@]}"; do
    FAILS=()
    echo ">>> scenario $n: ${NAMES[$n]:-unknown}"
    t0=$(date +%s.%N)
    "t$n"
    awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "    (%.1f s)\n", a - b }'
done

echo
line
echo "###  SUMMARY ($(($(date +%s) - SUITE_T0)) s; logs in $OUT)"
for n in "${SELECTED[@]}"; do
    printf '###  %-8s %s %s\n' "${RESULT[$n]:-FAIL}" "$n" "${NAMES[$n]}"
done
line
exit $FAILED
