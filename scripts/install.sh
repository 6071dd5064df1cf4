#!/usr/bin/env bash
# Install the header, the shared library (versioned name + SONAME and dev
# links) and an install-flavour pkg-config file under PREFIX.
set -euo pipefail
prefix=${1:?usage: install.sh PREFIX}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(bash "$root/scripts/build-lib.sh" | tail -1)
version=$(sed -n 's/^#define MK_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' "$root/include/migrationkit.h" | paste -sd.)
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig"
prefix=$(cd "$prefix" && pwd)
install -m 644 "$root/include/migrationkit.h" "$prefix/include/migrationkit.h"
install -s -m 755 "$bin/libmigrationkit.so" "$prefix/lib/libmigrationkit.so.$version"
ln -sf "libmigrationkit.so.$version" "$prefix/lib/libmigrationkit.so.0"
ln -sf "libmigrationkit.so.0" "$prefix/lib/libmigrationkit.so"
sed -e "s|@prefix@|$prefix|" -e "s|@libdir@|\${prefix}/lib|" -e "s|@includedir@|\${prefix}/include|" \
    -e "s|@version@|$version|" -e "s|@extra_libs@||" \
    "$root/pkgconfig/migrationkit.pc.in" > "$prefix/lib/pkgconfig/migrationkit.pc"
echo "installed libmigrationkit $version under $prefix"
