#!/usr/bin/env bash
# demo.sh - live-migrate a running KVM guest between two processes with
# libmigrationkit, over TCP loopback, and show what happened.
#
#   tests/integration/demo.sh [extra source options...]
#
# Builds examples/c/kvmhost against the library (PKG_CONFIG_PATH, else the
# SwiftPM release dir), starts a destination, then a source whose guest
# (512 MiB, 2 vCPUs: vCPU 0 dirties a 64 MiB working set at 64 MiB/s, vCPU 1
# computes) runs for a second and is then migrated. Extra options go to the
# source, e.g. --max-bandwidth 100M or --auto-converge on.
set -u
. "$(dirname "$0")/lib.sh"

if ! have_kvm; then
    echo "SKIPPED: no usable /dev/kvm on this machine; the demo needs real KVM."
    exit 0
fi
build_host || exit 1
if ! "$KVMHOST" --probe >/dev/null 2>&1; then
    echo "SKIPPED: /dev/kvm cannot run the guest on this machine; the demo needs real KVM."
    exit 0
fi

OUT=${OUT:-$(mktemp -d /tmp/mk-demo.XXXXXX)}
mkdir -p "$OUT"
PORT=${PORT:-$(free_port)}
MEM=${MEM:-512M}
echo "libmigrationkit $(pkg-config --modversion migrationkit) from $(pkg-config --variable=libdir migrationkit)"
echo "logs and JSON in $OUT"
echo

"$KVMHOST" --incoming "tcp:127.0.0.1:$PORT" --mem "$MEM" --vcpus 2 --run-after-seconds 2 \
    --stats-json "$OUT/dst.json" >"$OUT/dst.log" 2>&1 &
DPID=$!
trap 'kill $DPID 2>/dev/null' EXIT
wait_for_line "$OUT/dst.log" "listening on" 20 || { cat "$OUT/dst.log"; exit 1; }
echo "---- destination: $(grep -m1 'listening on' "$OUT/dst.log")"
echo "---- source:"
"$KVMHOST" --mem "$MEM" --vcpus 2 --dirtiers 0 --working-set 64M --dirty-rate 64M \
    --downtime-limit 300 --migrate "tcp:127.0.0.1:$PORT" --migrate-after 1 \
    --stats-json "$OUT/src.json" --timeline "$OUT/timeline.svg" "$@" 2>&1 | tee "$OUT/src.log"
SRC_RC=${PIPESTATUS[0]}
wait_pid "$DPID" 60
DST_RC=$WAIT_RC
trap - EXIT
echo
echo "---- destination:"
cat "$OUT/dst.log"

S=$OUT/src.json
D=$OUT/dst.json
echo
echo "================================ RESULT ================================"
printf 'migration        %s in %s ms: %s MiB sent, %s dirty-log syncs, %s passes, bandwidth %s MB/s (%s)\n' \
    "$(jget "$S" .result)" "$(jget "$S" .host.total_time_ms)" \
    "$(jget "$S" '(.host.transferred / 104857.6 | floor) / 10')" "$(jget "$S" .host.dirty_sync_count)" \
    "$(jget "$S" .host.passes)" "$(jget "$S" '(.host.bandwidth_estimate / 100000 | floor) / 10')" \
    "$(jget "$S" .host.bandwidth_source)"
printf 'downtime         measured end to end %s ms (source vCPU pause -> destination vCPU resume)\n' \
    "$(jget "$D" .host.downtime_e2e_ms)"
printf '                 library %s ms (pause -> destination ack), expected at switchover %s ms, limit %s ms\n' \
    "$(jget "$S" .host.downtime_ms)" "$(jget "$S" .host.expected_downtime_ms)" "$(jget "$S" .host.downtime_limit_ms)"
printf 'stop-and-copy    pause %s us, sync %s us, RAM %s us (%s KiB), device state %s us, flush+ack %s us\n' \
    "$(jget "$S" .host.stop_copy_us.pause)" "$(jget "$S" .host.stop_copy_us.sync)" "$(jget "$S" .host.stop_copy_us.ram)" \
    "$(jget "$S" '.host.stop_copy_us.ram_bytes / 1024 | floor')" "$(jget "$S" .host.stop_copy_us.device)" \
    "$(jget "$S" .host.stop_copy_us.flush)"
printf 'memory           %s: QEMU invariant over %s working-set pages, address pattern over %s other pages (checked %s us before resume)\n' \
    "$([ "$(jget "$D" .host.verify.ok)" = true ] && echo VERIFIED || echo "NOT VERIFIED")" \
    "$(jget "$D" .host.verify.pages)" "$(jget "$D" .host.verify.static_pages)" "$(jget "$D" .host.verify_before_resume_us)"
printf 'guest            %s\n' "$(jget "$D" .host.continued)"
printf 'timeline         %s (remaining, rates, expected downtime vs limit, throttle; switchover marked)\n' "$OUT/timeline.svg"
echo "========================================================================"
if [ "$SRC_RC" = 0 ] && [ "$DST_RC" = 0 ]; then
    echo "DEMO OK"
else
    echo "DEMO FAILED (source exit $SRC_RC, destination exit $DST_RC)"
    exit 1
fi
