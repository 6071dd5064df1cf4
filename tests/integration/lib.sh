# lib.sh - helpers shared by run.sh and demo.sh (sourced, not run).
#
# Finds the library through pkg-config (PKG_CONFIG_PATH from the caller, else
# the SwiftPM release bin dir), builds examples/c/kvmhost, and offers small
# process helpers. Everything runs real processes over real sockets.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HOSTDIR=$ROOT/examples/c/kvmhost
KVMHOST=$HOSTDIR/kvmhost

# Where pkg-config finds migrationkit.pc: the caller's PKG_CONFIG_PATH, else
# .build/release/pkgconfig, else $(swift build -c release --show-bin-path)/pkgconfig.
find_pkgconfig() {
    if [ -n "${PKG_CONFIG_PATH:-}" ] && pkg-config --exists migrationkit 2>/dev/null; then
        return 0
    fi
    local cand=$ROOT/.build/release/pkgconfig
    if [ ! -f "$cand/migrationkit.pc" ]; then
        local swift=swift
        command -v swift >/dev/null 2>&1 || swift=/opt/swift/usr/bin/swift
        if [ -x "$(command -v "$swift" 2>/dev/null)" ]; then
            cand=$(cd "$ROOT" && "$swift" build -c release --show-bin-path 2>/dev/null)/pkgconfig
        fi
    fi
    if [ -f "$cand/migrationkit.pc" ]; then
        export PKG_CONFIG_PATH=$cand${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
        return 0
    fi
    return 1
}

build_host() {
    if ! find_pkgconfig; then
        echo "cannot find migrationkit.pc: build the library first (bash scripts/build-lib.sh) or set PKG_CONFIG_PATH" >&2
        return 1
    fi
    make -s -C "$HOSTDIR" >&2
}

have_kvm() {
    [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]
}

# A TCP port nobody listens on.
free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 30000))
        if ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
            echo "$p"
            return 0
        fi
    done
    echo 45123
}

# wait_pid PID SECONDS: wait for a background child of this shell, kill it
# after SECONDS. Sets WAIT_RC to its exit code (124 if it had to be killed).
wait_pid() {
    local pid=$1 secs=$2 waited=0
    WAIT_RC=
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge $((secs * 10)) ]; then
            kill -9 "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            WAIT_RC=124
            return
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    wait "$pid"
    WAIT_RC=$?
}

# wait_for_line FILE PATTERN SECONDS: wait until FILE has a line matching PATTERN.
wait_for_line() {
    local f=$1 pat=$2 secs=$3 i=0
    while [ $i -lt $((secs * 10)) ]; do
        grep -q -- "$pat" "$f" 2>/dev/null && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# jq with a default for missing files/fields
jget() {
    local file=$1 expr=$2
    [ -s "$file" ] || { echo "null"; return; }
    jq -r "$expr" "$file" 2>/dev/null || echo "null"
}

# ---- two network namespaces joined by a veth pair (scenario 8, the bench's "link") ----
# NS_S / NS_D, IF_S / IF_D name them (per process); the source side gets
# 10.231.7.1, the destination 10.231.7.2 (NETNS_DST_IP).
NS_S=mkit-src-$$
NS_D=mkit-dst-$$
IF_S=mkvs$$
IF_D=mkvd$$
IF_S=${IF_S:0:15}
IF_D=${IF_D:0:15}
NETNS_DST_IP=10.231.7.2

# netns_up ERRFILE: create both namespaces and the veth pair. Returns 1 with
# NETNS_WHY set if this machine cannot (no ip/tc, no privileges): callers skip.
netns_up() {
    local errf=$1
    NETNS_WHY=
    if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
        NETNS_WHY="ip/tc not installed"
        return 1
    fi
    if ! ip netns add "$NS_S" 2>"$errf" || ! ip netns add "$NS_D" 2>>"$errf"; then
        NETNS_WHY="cannot create network namespaces ($(head -c 120 "$errf"))"
        return 1
    fi
    if ! { ip link add "$IF_S" type veth peer name "$IF_D" &&
           ip link set "$IF_S" netns "$NS_S" && ip link set "$IF_D" netns "$NS_D" &&
           ip -n "$NS_S" addr add 10.231.7.1/24 dev "$IF_S" && ip -n "$NS_D" addr add "$NETNS_DST_IP/24" dev "$IF_D" &&
           ip -n "$NS_S" link set lo up && ip -n "$NS_D" link set lo up &&
           ip -n "$NS_S" link set "$IF_S" up && ip -n "$NS_D" link set "$IF_D" up; } 2>"$errf"; then
        NETNS_WHY="cannot set up the veth pair ($(head -c 120 "$errf"))"
        return 1
    fi
}

# netns_tbf RATE ERRFILE: a real bottleneck of RATE (tc syntax, e.g. 1gbit), both directions.
netns_tbf() {
    local rate=$1 errf=$2
    ip netns exec "$NS_S" tc qdisc add dev "$IF_S" root tbf rate "$rate" burst 256kb latency 20ms 2>"$errf" &&
        ip netns exec "$NS_D" tc qdisc add dev "$IF_D" root tbf rate "$rate" burst 256kb latency 20ms 2>>"$errf"
}

# netns_down: kill what runs inside, remove both namespaces and the pair.
netns_down() {
    ip netns pids "$NS_S" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns pids "$NS_D" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del "$NS_S" 2>/dev/null
    ip netns del "$NS_D" 2>/dev/null
    ip link del "$IF_S" 2>/dev/null
    if ip netns list 2>/dev/null | grep -q -e "$NS_S" -e "$NS_D"; then
        echo "WARNING: namespaces $NS_S / $NS_D could not be removed" >&2
    fi
    true
}
