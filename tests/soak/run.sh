#!/usr/bin/env bash
# Soak: one running guest migrated back and forth between two long-lived
# kvmhost processes, A -> B -> A ..., SOAK_HOPS times (default 100), with
# kvmhost --soak (each process alternates between sending and receiving).
# Every hop: the receiving side verifies memory before resuming (QEMU's
# invariant, status pages against the source's pause snapshot), after
# resuming (page patterns, static area) and after running (invariant again,
# work advanced, entry code ran once). Across hops the guest's work counters
# only grow and it never restarts. Prints total time and downtime
# min/median/max per hop; exit 0 only if every hop passed.
#
# Env: PKG_CONFIG_PATH, SOAK_HOPS (default 100), OUT (default a new /tmp dir)
set -u
. "$(dirname "$0")/../integration/lib.sh"
HOPS=${SOAK_HOPS:-100}
OUT=${OUT:-$(mktemp -d /tmp/mk-soak.XXXXXX)}
GUEST=(--mem 128M --vcpus 2 --dirtiers 0 --working-set 32M --dirty-rate 32M)
MIG=(--downtime-limit 300 --migrate-after 0.2 --run-after-seconds 0.3 --connect-timeout 30 --accept-timeout 60)

if ! have_kvm; then echo "SKIPPED: no usable /dev/kvm: the soak was NOT run"; exit 77; fi
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 1; }
build_host || exit 1
"$KVMHOST" --probe >/dev/null 2>&1 || { echo "SKIPPED: /dev/kvm cannot run the guest: the soak was NOT run"; exit 77; }
mkdir -p "$OUT"
PA=$(free_port); PB=$(free_port)
while [ "$PA" = "$PB" ]; do PB=$(free_port); done
echo "soak: $HOPS hops between A (tcp:127.0.0.1:$PA) and B (tcp:127.0.0.1:$PB); logs in $OUT"
T0=$(date +%s.%N)
"$KVMHOST" --incoming "tcp:127.0.0.1:$PB" --soak "tcp:127.0.0.1:$PA" --hops "$HOPS" "${GUEST[@]}" "${MIG[@]}" \
    --progress none --stats-json "$OUT/B.hop-{hop}.json" >"$OUT/B.log" 2>&1 &
BPID=$!
wait_for_line "$OUT/B.log" "listening on" 30 || true
"$KVMHOST" --migrate "tcp:127.0.0.1:$PB" --soak "tcp:127.0.0.1:$PA" --hops "$HOPS" "${GUEST[@]}" "${MIG[@]}" \
    --progress none --stats-json "$OUT/A.hop-{hop}.json" >"$OUT/A.log" 2>&1 &
APID=$!
wait_pid "$APID" $((HOPS * 10 + 60)); ARC=$WAIT_RC
wait_pid "$BPID" 60; BRC=$WAIT_RC
TOTAL=$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN { printf "%.1f", a - b }')

FAILS=0
DOWNS=()
prev_pause=""; prev_end=""
for k in $(seq 1 "$HOPS"); do
    h=$(printf '%03d' "$k")
    if [ $((k % 2)) = 1 ]; then s=A; d=B; else s=B; d=A; fi
    sj=$OUT/$s.hop-$h.json; dj=$OUT/$d.hop-$h.json
    why=()
    if [ -s "$sj" ] && [ -s "$dj" ]; then
        # one jq per hop: downtime, work at pause, work at the end, then what is wrong
        mapfile -t r < <(jq -rn --slurpfile S "$sj" --slurpfile D "$dj" \
            --argjson pp "${prev_pause:-null}" --argjson pe "${prev_end:-null}" '
            $S[0] as $s | $D[0] as $d | [$d.host.guest_at_pause[].work] as $p | [$d.host.guest_end[].work] as $e |
            $d.host.downtime_e2e_ms, ($p | tojson), ($e | tojson),
            (if $s.result != "completed" then "source \($s.result): \($s.error_msg)" else empty end),
            (if $s.leak.fds_before != $s.leak.fds_after or $s.leak.threads_before != $s.leak.threads_after
             then "source leaked: \($s.leak | tojson)" else empty end),
            (if $d.result != "ok" then "destination \($d.result): \($d.error)" else empty end),
            (if $d.host.verify_before_resume.ok != true then "check before resume failed" else empty end),
            (if $d.host.verify.ok != true then "memory check after resume failed" else empty end),
            (if $d.host.verify_end.ok != true then "invariant after running failed" else empty end),
            (if ([$d.host.guest_end[].starts] | all(. == 1)) | not then "the guest restarted" else empty end),
            (if [range(0; $p | length) as $i | $e[$i] > $p[$i]] | all | not
             then "work did not advance after resume: \($p) -> \($e)" else empty end),
            (if $pe != null and ([range(0; $p | length) as $i | $p[$i] >= $pe[$i] and $p[$i] > $pp[$i]] | all | not)
             then "work went back across hops: previous pause \($pp), end \($pe), now \($p)" else empty end)')
        dt=${r[0]:-null}; pause=${r[1]:-null}; end=${r[2]:-null}
        why=("${r[@]:3}")
        [ ${#r[@]} -ge 3 ] || why=("unreadable statistics: $sj, $dj")
    else
        dt=null; pause=null; end=null
        why=("no statistics for this hop (it did not run)")
    fi
    prev_pause=$pause; prev_end=$end
    DOWNS+=("$dt")
    if [ ${#why[@]} -gt 0 ]; then
        FAILS=$((FAILS + 1))
        echo "hop $k ($s -> $d): FAIL: $(printf '%s; ' "${why[@]}")"
    elif [ "$k" -le 3 ] || [ $((k % 10)) = 0 ]; then
        echo "hop $k ($s -> $d): ok, downtime $dt ms, total $(jget "$sj" .host.total_time_ms) ms, work at pause $pause"
    fi
done
STATS=$(printf '%s\n' "${DOWNS[@]}" | grep -E '^[0-9.]+$' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR) printf "min %.2f ms, median %.2f ms, max %.2f ms over %d hops", v[1], (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[NR], NR }')
echo
echo "== soak: $HOPS hops in $TOTAL s, $FAILS failed; A exit $ARC, B exit $BRC; downtime (source pause -> destination resume) $STATS"
[ "$FAILS" = 0 ] && [ "$ARC" = 0 ] && [ "$BRC" = 0 ]
