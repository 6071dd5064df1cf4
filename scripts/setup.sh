#!/usr/bin/env bash
# Install what building and testing needs, only if missing (idempotent).
# Swift 6.3.1 is expected at /opt/swift (it is on this project's machines).
set -euo pipefail
need=()
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v gcc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v ip >/dev/null || need+=(iproute2)
command -v tc >/dev/null || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3)
command -v jq >/dev/null || need+=(jq)
# The Rust example: any cargo will do (rustup's in ~/.cargo/bin counts even
# off PATH); Debian's only where there is none.
bash "$(dirname "$0")/find-cargo.sh" >/dev/null || need+=(cargo)
# make deb: dpkg-deb, dpkg-architecture, dpkg-shlibdeps; readelf for the checks.
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v dpkg-architecture >/dev/null || need+=(dpkg-dev)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v readelf >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd=sudo
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq "${need[@]}"
fi
if [ ! -x /opt/swift/usr/bin/swift ]; then
    echo "setup: Swift is not at /opt/swift; install Swift 6.3.1 there" >&2
    exit 1
fi
echo "setup: ok (cargo $(bash "$(dirname "$0")/find-cargo.sh"), swift $(/opt/swift/usr/bin/swift --version 2>/dev/null | head -1 | sed 's/.*version \([0-9.]*\).*/\1/'), $(gcc --version | head -1))"
