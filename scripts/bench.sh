#!/usr/bin/env bash
# Benchmarks, apart from the tests: ratios against raw baselines measured in
# the same run. Usage: bash scripts/bench.sh [MiB] [runs]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install.sh" "$root/build/prefix" >/dev/null
export PKG_CONFIG_PATH=$root/build/prefix/lib/pkgconfig
make -s -C "$root/bench" build/migrate_bench
"$root/bench/build/migrate_bench" "${1:-1024}" "${2:-3}"
