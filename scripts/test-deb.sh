#!/usr/bin/env bash
# test-deb.sh [DIR]   (default build/deb; `make test-deb` builds them first)
#
# Checks the two Debian packages, unpacks them into a scratch root with
# `dpkg -x` (nothing is installed on this machine, no root needed) and builds
# examples/c/inprocess_migrate.c against that root with nothing but
# `pkg-config --cflags --libs migrationkit`, runs it and requires equal memory.
#
# Why a scratch root is as good as installing: the .pc file and the library
# sit at /usr/lib/<multiarch>/... inside it, and this script checks that
# those directories are in pkg-config's default search path and in the
# dynamic linker's built-in one. PKG_CONFIG_LIBDIR (the default search path,
# moved under the root) and PKG_CONFIG_SYSROOT_DIR (the root prefixed to the
# -I/-L paths) make pkg-config read exactly the file it would find installed,
# and LD_LIBRARY_PATH stands in for /usr/lib/<multiarch> when the example
# runs. Installed for real, the same commands need none of the three.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/build/deb}
version=$(sed -n 's/^#define MK_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' "$root/include/migrationkit.h" | paste -sd.)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
runtime=libmigrationkit0 dev=libmigrationkit-dev

problems=0
fail() { echo "FAIL: $*"; problems=$((problems + 1)); }
ok() { echo "ok:   $*"; }
die() { echo "test-deb: $*" >&2; exit 2; }

find_deb() {
    local f=("$dir/${1}_${version}"-*"_$arch.deb")
    [ ${#f[@]} = 1 ] && [ -f "${f[0]}" ] || die "want exactly one $dir/${1}_${version}-*_$arch.deb, found: ${f[*]}"
    echo "${f[0]}"
}
rdeb=$(find_deb $runtime)
ddeb=$(find_deb $dev)
debver=$(dpkg-deb -f "$rdeb" Version)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sysroot=$tmp/root
mkdir -p "$sysroot"

# --- Control fields -----------------------------------------------------------
field_is() { # deb field want
    local got
    got=$(dpkg-deb -f "$1" "$2")
    if [ "$got" = "$3" ]; then ok "$(basename "$1"): $2: $got"; else fail "$(basename "$1"): $2 is '$got', want '$3'"; fi
}
for deb in "$rdeb" "$ddeb"; do
    field_is "$deb" Architecture "$arch"
    field_is "$deb" Multi-Arch same
    field_is "$deb" Version "$debver"
done
field_is "$rdeb" Package $runtime
field_is "$rdeb" Section libs
field_is "$ddeb" Package $dev
field_is "$ddeb" Section libdevel
field_is "$ddeb" Depends "$runtime (= $debver)"
case "$(dpkg-deb -f "$rdeb" Depends)" in
    *"libc6 (>="*) ok "$runtime: Depends: $(dpkg-deb -f "$rdeb" Depends)" ;;
    *) fail "$runtime: Depends lacks libc6 (dpkg-shlibdeps output missing?)" ;;
esac
[[ $debver == "$version"-* ]] && ok "Debian version $debver is the header's $version" ||
    fail "Debian version $debver does not carry the header's $version"

# --- Contents -------------------------------------------------------------------
for pkg in $runtime $dev; do
    deb=$([ $pkg = $runtime ] && echo "$rdeb" || echo "$ddeb")
    mkdir -p "$tmp/ctrl/$pkg"
    dpkg-deb -e "$deb" "$tmp/ctrl/$pkg"
    dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./||' | grep -v '/$' | grep . | sort > "$tmp/$pkg.files"
    dpkg -x "$deb" "$sysroot"
    if (cd "$sysroot" && md5sum --quiet -c "$tmp/ctrl/$pkg/md5sums"); then
        ok "$pkg: md5sums match ($(wc -l < "$tmp/ctrl/$pkg/md5sums") files)"
    else
        fail "$pkg: md5sums do not match the files"
    fi
    for f in copyright changelog.Debian.gz; do
        [ -f "$sysroot/usr/share/doc/$pkg/$f" ] || fail "$pkg: no /usr/share/doc/$pkg/$f"
    done
    head=$(zcat "$sysroot/usr/share/doc/$pkg/changelog.Debian.gz" | head -1)
    [[ $head == "migrationkit ($debver) "* ]] && ok "$pkg: changelog.Debian.gz starts with $debver" ||
        fail "$pkg: changelog.Debian.gz starts '$head'"
done
both=$(comm -12 "$tmp/$runtime.files" "$tmp/$dev.files")
[ -z "$both" ] && ok "no path is in both packages" || fail "paths in both packages (dpkg refuses that): $both"

L=usr/lib/$ma
expect_files() { # pkg path...
    local pkg=$1; shift
    printf '%s\n' "$@" | sort > "$tmp/$pkg.want"
    if diff -u "$tmp/$pkg.want" "$tmp/$pkg.files" > "$tmp/$pkg.diff"; then ok "$pkg: exactly the expected files"
    else fail "$pkg: unexpected file list (- expected, + in package):"; sed 's/^/        /' "$tmp/$pkg.diff"; fi
}
expect_files $runtime $L/libmigrationkit.so.$version $L/libmigrationkit.so.0 \
    usr/share/doc/$runtime/copyright usr/share/doc/$runtime/changelog.Debian.gz
expect_files $dev usr/include/migrationkit.h $L/libmigrationkit.so $L/pkgconfig/migrationkit.pc \
    usr/share/doc/$dev/copyright usr/share/doc/$dev/changelog.Debian.gz

lib=$sysroot/$L/libmigrationkit.so.$version
[ "$(readlink "$sysroot/$L/libmigrationkit.so.0")" = "libmigrationkit.so.$version" ] &&
    ok "libmigrationkit.so.0 -> libmigrationkit.so.$version" || fail "libmigrationkit.so.0 does not point at libmigrationkit.so.$version"
[ "$sysroot/$L/libmigrationkit.so" -ef "$lib" ] && ok "libmigrationkit.so (dev link) resolves to the library" ||
    fail "libmigrationkit.so does not resolve to libmigrationkit.so.$version"
[ "$(stat -c %a "$lib")" = 644 ] && ok "library mode 644" || fail "library mode $(stat -c %a "$lib"), want 644"
grep -qx 'activate-noawait ldconfig' "$tmp/ctrl/$runtime/triggers" && ok "$runtime: ldconfig trigger" ||
    fail "$runtime: no 'activate-noawait ldconfig' trigger"

# --- SONAME, exports, symbols file -------------------------------------------------
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
[ "$soname" = libmigrationkit.so.0 ] && ok "SONAME $soname (package $runtime)" || fail "SONAME '$soname'"
# The installed library must export exactly what the installed header declares.
if MK_HEADER=$sysroot/usr/include/migrationkit.h bash "$root/scripts/check-exports.sh" "$lib" > "$tmp/exports.log" 2>&1; then
    ok "check-exports.sh: installed library matches installed header"
else
    fail "check-exports.sh on the installed library:"; sed 's/^/        /' "$tmp/exports.log"
fi
syms=$tmp/ctrl/$runtime/symbols
[ "$(head -1 "$syms")" = "$soname $runtime #MINVER#" ] && ok "symbols: header line for $soname" ||
    fail "symbols: first line is '$(head -1 "$syms")'"
# Both sides as name@version-node. objdump -T prints "VALUE FLAGS SECTION
# SIZE VERSION [VISIBILITY] NAME" (the version node itself as its own name);
# readelf, which check-exports.sh uses, is not asked twice.
grep '^ ' "$syms" | awk '{ print $1 }' | sort > "$tmp/syms.file"
objdump -T "$lib" | awk '$2 == "g" && $0 !~ /\*UND\*/ {
        for (i = 3; i < NF; i++) if ($i ~ /^[0-9a-f]+$/ && length($i) == length($1)) break
        v = $(i + 1); gsub(/[()]/, "", v); print $NF "@" v }' | sort > "$tmp/syms.lib"
if diff -u "$tmp/syms.file" "$tmp/syms.lib" > "$tmp/syms.diff"; then
    ok "symbols file lists exactly the $(wc -l < "$tmp/syms.lib") exported symbols (objdump -T)"
else
    fail "symbols file (-) and objdump -T (+) differ:"; sed 's/^/        /' "$tmp/syms.diff"
fi
# Debian's own reading of it: dpkg-gensymbols -c4 fails on any symbol added,
# removed or changed against the file.
mkdir -p "$tmp/gensym/debian"
printf 'Source: migrationkit\n\nPackage: %s\nArchitecture: any\n' $runtime > "$tmp/gensym/debian/control"
if (cd "$tmp/gensym" && dpkg-gensymbols -p$runtime -v"$debver" -P"$sysroot" -e"$lib" -I"$syms" -c4 -O"$tmp/gensym/out") \
        > "$tmp/gensym.log" 2>&1; then
    ok "dpkg-gensymbols -c4 agrees with the symbols file"
else
    fail "dpkg-gensymbols -c4:"; sed 's/^/        /' "$tmp/gensym.log"
fi
while read -r sym ver; do
    dpkg --compare-versions "$ver" le "$version" || fail "symbols: $sym at $ver, newer than the package"
done < <(grep '^ ' "$syms")
newest=$(grep '^ ' "$syms" | awk '{ print $2 }' | sort -V | tail -1)
[ "$(cat "$tmp/ctrl/$runtime/shlibs")" = "libmigrationkit 0 $runtime (>= $newest)" ] &&
    ok "shlibs: $(cat "$tmp/ctrl/$runtime/shlibs")" || fail "shlibs: '$(cat "$tmp/ctrl/$runtime/shlibs")'"

# --- The scratch root stands for /: prove its directories are the default ones -----
if tr ':' '\n' <<<"$(pkg-config --variable pc_path pkg-config)" | grep -qx "/$L/pkgconfig"; then
    ok "/$L/pkgconfig is in pkg-config's default search path"
else
    fail "/$L/pkgconfig is not in pkg-config's default search path: $(pkg-config --variable pc_path pkg-config)"
fi
interp=$(readelf -l /bin/sh | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
if "$interp" --help 2>/dev/null | grep -qE "^ +/$L \(system search path\)"; then
    ok "/$L is in the dynamic linker's system search path"
else
    fail "/$L is not in $interp's system search path"
fi

# --- A consumer built with plain pkg-config against the packages ----------------------
export PKG_CONFIG_LIBDIR=$sysroot/$L/pkgconfig PKG_CONFIG_SYSROOT_DIR=$sysroot
unset PKG_CONFIG_PATH
flags=$(pkg-config --cflags --libs migrationkit)
echo "      pkg-config --cflags --libs migrationkit: $flags"
[ "$(pkg-config --modversion migrationkit)" = "$version" ] || fail "pkg-config --modversion: $(pkg-config --modversion migrationkit)"
# shellcheck disable=SC2086
if ! cc -std=c11 -O2 -Wall -Wextra -Werror -pthread "$root/examples/c/inprocess_migrate.c" $flags \
        -o "$tmp/inprocess_migrate" 2> "$tmp/cc.log"; then
    fail "building examples/c/inprocess_migrate.c with those flags:"; sed 's/^/        /' "$tmp/cc.log"
    echo "test-deb: $problems problem(s)" >&2
    exit 1
fi
export LD_LIBRARY_PATH=$sysroot/$L
resolved=$(ldd "$tmp/inprocess_migrate" | awk '$1 == "libmigrationkit.so.0" { print $3 }')
[ "$resolved" -ef "$lib" ] && ok "the example loads the packaged library ($resolved)" ||
    fail "the example resolves libmigrationkit.so.0 to '$resolved', not the packaged one"
for arg in "" --prefault; do
    if timeout 120 "$tmp/inprocess_migrate" $arg > "$tmp/run.log" 2>&1 && grep -q '^buffers EQUAL' "$tmp/run.log"; then
        ok "inprocess_migrate $arg: $(grep '^buffers' "$tmp/run.log")"
    else
        fail "inprocess_migrate $arg against the packages:"; tail -5 "$tmp/run.log" | sed 's/^/        /'
    fi
done

# What the symbols file is for: a program built against the package depends
# on the oldest libmigrationkit0 that has every function it calls. The example
# calls mk_dest_prefault (0.2); a program calling only mk_version_number, 0.1.
printf '#include <migrationkit.h>\nint main(void) { return mk_version_number() == 0; }\n' > "$tmp/v01.c"
# shellcheck disable=SC2086
cc -std=c11 "$tmp/v01.c" $flags -o "$tmp/v01"
dpkg-deb -R "$rdeb" "$tmp/pkgbuild"
for pair in "inprocess_migrate:0.2.0" "v01:0.1.0"; do
    exe=${pair%%:*} want="$runtime (>= ${pair#*:})"
    got=$(cd "$tmp/gensym" && dpkg-shlibdeps -O -S"$tmp/pkgbuild" -l"$tmp/pkgbuild/$L" "$tmp/$exe" 2>/dev/null |
          sed -n 's/^shlibs:Depends=//p' | tr ',' '\n' | sed 's/^ *//' | grep "^$runtime" || true)
    [ "$got" = "$want" ] && ok "dpkg-shlibdeps: $exe depends on $got" || fail "dpkg-shlibdeps: $exe gets '$got', want '$want'"
done

if command -v lintian >/dev/null; then
    lintian --fail-on error "$rdeb" "$ddeb" && ok "lintian: no errors" || fail "lintian reports errors"
else
    echo "note: lintian is not installed; skipped"
fi

if [ "$problems" -ne 0 ]; then
    echo "test-deb: $problems problem(s)" >&2
    exit 1
fi
echo "test-deb: OK ($(basename "$rdeb"), $(basename "$ddeb"))"
