#!/usr/bin/env bash
# Build libmigrationkit.so (release), give it its SONAME link and write the
# build-tree pkg-config file. Prints the bin dir on its last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH
cd "$root"
bin=$(swift build -c release --show-bin-path)
# SwiftPM does not know the link depends on the version script: relink
# when the map changed, or a symbol would keep its old node.
if [ -e "$bin/libmigrationkit.so" ] && [ linker/migrationkit.map -nt "$bin/libmigrationkit.so" ]; then
    rm -f "$bin/libmigrationkit.so"
fi
swift build -c release --product migrationkit >&2
ln -sf libmigrationkit.so "$bin/libmigrationkit.so.0"
mkdir -p "$bin/pkgconfig"
version=$(sed -n 's/^#define MK_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' include/migrationkit.h | paste -sd.)
sed -e "s|@prefix@|$root|" -e "s|@libdir@|$bin|" -e "s|@includedir@|$root/include|" \
    -e "s|@version@|$version|" -e "s|@extra_libs@| -Wl,-rpath,\${libdir}|" \
    pkgconfig/migrationkit.pc.in > "$bin/pkgconfig/migrationkit.pc"
echo "$bin"
