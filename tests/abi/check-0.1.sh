#!/usr/bin/env bash
# Backward compatibility: a program written and compiled against the 0.1
# header keeps working with this library. tests/abi/v0.1 holds the 0.1
# release's header and in-process example exactly as they were (commit
# d9b3219); they are compiled as they are, linked against the library under
# test, and run: every 0.1 function must resolve with its 0.1 symbol version,
# the smaller 0.1 structs (struct_size) must be accepted, and the migration
# must end with memory equal.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/build}
mkdir -p "$out"
libdir=$(pkg-config --variable=libdir migrationkit)
cc -std=c11 -O2 -Wall -Wextra -pthread -I"$here/v0.1" "$here/v0.1/inprocess_migrate.c" -o "$out/inprocess_migrate_0.1" \
    -L"$libdir" -lmigrationkit -Wl,-rpath,"$libdir"
# What the old binary asks for: only MIGRATIONKIT_0 symbols.
wanted=$(objdump -T "$out/inprocess_migrate_0.1" | awk '/ mk_/ { v = $(NF-1); gsub(/[()]/, "", v); print v }' | sort -u | paste -sd' ')
echo "abi: the 0.1 example asks for symbol version(s): $wanted"
[ "$wanted" = MIGRATIONKIT_0 ] || { echo "abi: FAIL: expected only MIGRATIONKIT_0"; exit 1; }
log=$out/inprocess_migrate_0.1.log
if ! timeout 120 "$out/inprocess_migrate_0.1" >"$log" 2>&1; then
    echo "abi: FAIL: the 0.1 example against $(pkg-config --modversion migrationkit):"
    tail -5 "$log"
    exit 1
fi
grep -q "EQUAL" "$log" || { echo "abi: FAIL: no 'EQUAL' in the 0.1 example's output"; tail -5 "$log"; exit 1; }
echo "abi: ok: the 0.1 example, built against the 0.1 header, migrated with libmigrationkit $(pkg-config --modversion migrationkit): $(grep -m1 -o 'buffers EQUAL[^,]*' "$log")"
