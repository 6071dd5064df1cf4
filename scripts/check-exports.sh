#!/usr/bin/env bash
# check-exports.sh [path/to/libmigrationkit.so]
#
# The shared library must export exactly the functions include/migrationkit.h
# declares: every declared mk_* function defined and global, nothing else
# global (no Swift $s... symbols, no cshim_*, no stray mk_* the header does
# not know). Also: SONAME libmigrationkit.so.0, and no Swift runtime library
# (or anything unresolved) among its dependencies.
#
# Why: a Swift @_cdecl function that is not `public` silently disappears from
# a release build, and nothing checks the C signature against the header, so
# this is the one place where header and binary meet before a consumer links.
#
# Without an argument, checks the build-tree library of scripts/build-lib.sh.
# MK_HEADER overrides the header; CC the compiler used to preprocess it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
header=${MK_HEADER:-$root/include/migrationkit.h}
cc=${CC:-cc}

die() { echo "check-exports: $*" >&2; exit 2; }

lib=${1:-}
if [ -z "$lib" ]; then
    for cand in "$root/.build/release/libmigrationkit.so" \
                "$root/.build/x86_64-unknown-linux-gnu/release/libmigrationkit.so" \
                "$root/.build/aarch64-unknown-linux-gnu/release/libmigrationkit.so"; do
        if [ -e "$cand" ]; then lib=$cand; break; fi
    done
    [ -n "$lib" ] || die "no library given and none in .build/release; run scripts/build-lib.sh or pass a path"
fi
[ -f "$lib" ] || die "$lib: no such file"
[ -f "$header" ] || die "$header: no such file"
command -v "$cc" >/dev/null || die "need a C compiler ($cc) to preprocess the header"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

problems=0
fail() { echo "FAIL: $*"; problems=$((problems + 1)); }
ok() { echo "ok:   $*"; }

# --- Functions the header declares -------------------------------------------
# Preprocess (comments gone, as the compiler sees it) and take every mk_*
# identifier that is followed by "(": in a header without inline code that is
# exactly the function declarations. Function-pointer members look like
# "(*name)(" and do not start with mk_.
"$cc" -std=c11 -E -P -x c "$header" > "$tmp/header.i" 2> "$tmp/cpp.err" ||
    die "preprocessing $header failed: $(cat "$tmp/cpp.err")"
grep -oE '\bmk_[A-Za-z0-9_]+[[:space:]]*\(' "$tmp/header.i" |
    sed -E 's/[[:space:]]*\($//' | sort -u > "$tmp/declared"
ndecl=$(wc -l < "$tmp/declared")
[ "$ndecl" -gt 0 ] || die "found no mk_* function declarations in $header"

# --- Symbols the library exports ---------------------------------------------
# Defined (section index not UND), binding GLOBAL or WEAK; the "@@VERSION"
# suffix is dropped. LOCAL entries (even those left in .dynsym) are not
# exported. The version node itself (MIGRATIONKIT_0, an ABS object) is not
# a symbol anyone links against.
if command -v readelf >/dev/null; then
    readelf --dyn-syms -W "$lib" > "$tmp/dynsyms" || die "readelf failed on $lib"
    # Num: Value Size Type Bind Vis Ndx Name
    awk '$1 ~ /^[0-9]+:$/ && $7 != "UND" && ($5 == "GLOBAL" || $5 == "WEAK") && NF >= 8 {
             name = $8; sub(/@.*/, "", name); print $4, name }' "$tmp/dynsyms" > "$tmp/exported_typed"
elif command -v nm >/dev/null; then
    # Upper-case type letters are global; W/V/w/v weak; lower-case others local.
    nm -D --defined-only "$lib" |
        awk 'NF >= 3 && ($2 ~ /^[A-Z]$/ || $2 ~ /^[wv]$/) {
                 name = $3; sub(/@.*/, "", name);
                 print ($2 == "T" || $2 == "W" ? "FUNC" : $2 == "A" ? "ABS" : "OBJECT"), name }' \
        > "$tmp/exported_typed"
else
    die "need readelf or nm"
fi

version_nodes=$(awk '$2 ~ /^MIGRATIONKIT_[0-9.]+$/ { print $2 }' "$tmp/exported_typed" | sort -u | paste -sd' ' -)
grep -vE ' MIGRATIONKIT_[0-9.]+$' "$tmp/exported_typed" | sort -u -k2 > "$tmp/exported_typed.clean" || true
awk '{ print $2 }' "$tmp/exported_typed.clean" | sort -u > "$tmp/exported"
nexp=$(wc -l < "$tmp/exported")

echo "library: $lib"
echo "header:  $header ($ndecl functions declared; $nexp global symbols exported${version_nodes:+; version node $version_nodes})"

missing=$(comm -23 "$tmp/declared" "$tmp/exported")
if [ -n "$missing" ]; then
    fail "declared in the header but not exported (a @_cdecl that is not public, misspelt, or missing):"
    printf '        %s\n' $missing
else
    ok "all $ndecl declared functions are exported"
fi

extra=$(comm -13 "$tmp/declared" "$tmp/exported")
if [ -n "$extra" ]; then
    nextra=$(printf '%s\n' "$extra" | wc -l)
    fail "$nextra exported symbol(s) the header does not declare (check linker/migrationkit.map):"
    printf '%s\n' "$extra" | head -40 | sed 's/^/        /'
    [ "$nextra" -le 40 ] || echo "        ... and $((nextra - 40)) more"
    swift_syms=$(printf '%s\n' "$extra" | grep -c '^\$s' || true)
    shim_syms=$(printf '%s\n' "$extra" | grep -c '^cshim_' || true)
    [ "$swift_syms" -eq 0 ] || echo "        ($swift_syms of them Swift-mangled \$s... symbols)"
    [ "$shim_syms" -eq 0 ] || echo "        ($shim_syms of them cshim_* glue)"
else
    ok "nothing exported beyond the header's functions"
fi

# Every declared function must be exported as a function, not as data.
notfunc=$(awk 'NR == FNR { want[$1] = 1; next } ($2 in want) && $1 != "FUNC" { print $2 " (" $1 ")" }' \
    "$tmp/declared" "$tmp/exported_typed.clean")
if [ -n "$notfunc" ]; then
    fail "declared functions exported with a non-function symbol type:"
    printf '        %s\n' "$notfunc"
else
    ok "every exported header symbol is a FUNC"
fi

# --- Symbol versions -----------------------------------------------------------
# linker/migrationkit.map names every symbol under the release that added it
# (no wildcard: a new function must be placed on purpose). Each declared
# function must appear there exactly once, and the library must carry it
# with that node's version.
map=$root/linker/migrationkit.map
sed -e 's|/\*.*\*/||' "$map" | awk '
    /^[A-Z_0-9.]+[[:space:]]*\{/ { node = $1; next }
    /^[[:space:]]*(global|local):/ { next }
    /^[[:space:]]*\}/ { node = ""; next }
    node != "" { gsub(/[;[:space:]]/, ""); if ($0 != "") print $0, node }' | sort > "$tmp/mapped"
if grep -q '\*' "$tmp/mapped"; then
    fail "a wildcard in a global: list of $map; list each symbol under its release"
fi
awk '{ print $1 }' "$tmp/mapped" | sort | uniq -d > "$tmp/mapdup"
if [ -s "$tmp/mapdup" ]; then
    fail "listed in more than one version node of $map: $(paste -sd' ' "$tmp/mapdup")"
fi
unmapped=$(comm -23 "$tmp/declared" <(awk '{ print $1 }' "$tmp/mapped" | sort -u))
if [ -n "$unmapped" ]; then
    fail "declared in the header but in no version node of $map:"
    printf '        %s\n' $unmapped
fi
if command -v readelf >/dev/null; then
    awk '$1 ~ /^[0-9]+:$/ && $7 != "UND" && NF >= 8 && $8 ~ /^mk_/ {
             split($8, a, "@"); v = a[length(a)]; print a[1], v }' "$tmp/dynsyms" | sort > "$tmp/versioned"
    wrongver=$(join "$tmp/mapped" "$tmp/versioned" | awk '$2 != $3 { print $1 " is " $3 ", the map says " $2 }')
    if [ -n "$wrongver" ]; then
        fail "symbol versions differ from $map:"
        printf '%s\n' "$wrongver" | sed 's/^/        /'
    elif [ -z "$unmapped" ]; then
        ok "every function carries its release's version ($(awk '{ print $2 }' "$tmp/mapped" | sort | uniq -c | awk '{ printf "%s%s: %s", sep, $2, $1; sep = ", " }'))"
    fi
fi

# --- SONAME -------------------------------------------------------------------
soname=$(readelf -d "$lib" 2>/dev/null | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
if [ "$soname" = "libmigrationkit.so.0" ]; then
    ok "SONAME is libmigrationkit.so.0"
else
    fail "SONAME is '${soname:-<none>}', expected libmigrationkit.so.0"
fi

# --- Dependencies -------------------------------------------------------------
if ldd "$lib" > "$tmp/ldd" 2>&1; then
    if grep -q 'not found' "$tmp/ldd"; then
        fail "ldd reports unresolved dependencies:"
        grep 'not found' "$tmp/ldd" | sed 's/^[[:space:]]*/        /'
    else
        ok "ldd resolves every dependency"
    fi
    swift_deps=$(grep -E 'libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime|libXCTest|/swift/' \
        "$tmp/ldd" || true)
    if [ -n "$swift_deps" ]; then
        fail "depends on Swift runtime libraries (the runtime must be linked in statically):"
        printf '%s\n' "$swift_deps" | sed 's/^[[:space:]]*/        /'
    else
        ok "no Swift runtime library among the dependencies ($(awk '$1 !~ /^linux-vdso/ && !/statically linked/ { print $1 }' "$tmp/ldd" | xargs -r -n1 basename | paste -sd' ' -))"
    fi
else
    fail "ldd failed on $lib: $(head -3 "$tmp/ldd")"
fi

if [ "$problems" -ne 0 ]; then
    echo "check-exports: $problems problem(s) in $lib" >&2
    exit 1
fi
echo "check-exports: OK"
