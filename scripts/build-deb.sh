#!/usr/bin/env bash
# build-deb.sh [OUTDIR]   (default build/deb)
#
# Builds the Debian binary packages with dpkg-deb, following Debian's
# library packaging rules without needing debhelper or a source package:
#   libmigrationkit0      the .so.X.Y.Z and its SONAME link in /usr/lib/<multiarch>;
#                         control area: symbols (+ shlibs) and the ldconfig trigger
#   libmigrationkit-dev   header, pkg-config file (prefix /usr), the .so link
# Both Multi-Arch: same, with copyright and changelog.Debian.gz in
# /usr/share/doc/<package> and md5sums. Names come from the SONAME, the
# upstream version from MK_VERSION_* in the header; DEB_REVISION (default 1)
# is the Debian revision. SOURCE_DATE_EPOCH (default: the last commit's
# time) dates the changelog and every file, so rebuilding the same tree gives
# byte-identical packages (a checkout at another path builds a different .so:
# its build ID differs, which is the Swift build's doing, not this script's).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/build/deb}
die() { echo "build-deb: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg-architecture dpkg-shlibdeps readelf strip gzip md5sum; do
    command -v "$tool" >/dev/null || die "$tool is missing (bash scripts/setup.sh installs it)"
done

bin=$(bash "$root/scripts/build-lib.sh" | tail -1)
built="$bin/libmigrationkit.so"
version=$(sed -n 's/^#define MK_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' "$root/include/migrationkit.h" | paste -sd.)
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "cannot read MK_VERSION_* from include/migrationkit.h"
debver="$version-${DEB_REVISION:-1}"
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}

# Debian policy 8.1: the runtime package is named after the SONAME.
soname=$(readelf -d "$built" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
[[ $soname =~ ^lib([A-Za-z0-9+.-]+)\.so\.([0-9]+)$ ]] || die "unexpected SONAME '$soname'"
base=${BASH_REMATCH[1]} sover=${BASH_REMATCH[2]}
runtime=lib$base$sover
[[ $base =~ [0-9]$ ]] && runtime=lib$base-$sover
dev=lib$base-dev
# The file name carries the full version; it must be the SONAME's major.
[ "${version%%.*}" = "$sover" ] ||
    die "header version $version but SONAME $soname: a new major needs a new SONAME"
realname=lib$base.so.$version
libdir=usr/lib/$multiarch

# Maintainer: DEB_MAINTAINER, else Debian's DEBFULLNAME/DEBEMAIL, else the
# author of the commit being packaged (the same for every builder, unlike
# git's user config), else a placeholder lintian accepts (not @localhost).
maintainer=${DEB_MAINTAINER:-}
[ -n "$maintainer" ] || [ -z "${DEBFULLNAME:-}" ] || [ -z "${DEBEMAIL:-}" ] || maintainer="$DEBFULLNAME <$DEBEMAIL>"
[ -n "$maintainer" ] || maintainer=$(git -C "$root" log -1 --format='%an <%ae>' 2>/dev/null || true)
[ -n "$maintainer" ] || maintainer="MigrationKit maintainers <maintainers@migrationkit.invalid>"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- Files --------------------------------------------------------------------
R=$tmp/$runtime D=$tmp/$dev
mkdir -p "$R/DEBIAN" "$R/$libdir" "$D/DEBIAN" "$D/$libdir/pkgconfig" "$D/usr/include"
# Shared libraries are 0644 and stripped of what is only for debugging or
# linking statically (what dh_strip does).
install -m 644 "$built" "$R/$libdir/$realname"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$R/$libdir/$realname"
ln -s "$realname" "$R/$libdir/$soname"

install -m 644 "$root/include/migrationkit.h" "$D/usr/include/migrationkit.h"
ln -s "$soname" "$D/$libdir/lib$base.so"
sed -e "s|@prefix@|/usr|" -e "s|@libdir@|\${prefix}/lib/$multiarch|" -e "s|@includedir@|\${prefix}/include|" \
    -e "s|@version@|$version|" -e "s|@extra_libs@||" \
    "$root/pkgconfig/migrationkit.pc.in" > "$D/$libdir/pkgconfig/migrationkit.pc"
chmod 644 "$D/$libdir/pkgconfig/migrationkit.pc"

changelog() {
    printf '%s (%s) unstable; urgency=medium\n\n' migrationkit "$debver"
    printf '  * Upstream %s, packaged by scripts/build-deb.sh from commit %s.\n\n' "$version" "$commit"
    printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
}
for pkg in "$runtime" "$dev"; do
    doc=$tmp/$pkg/usr/share/doc/$pkg
    mkdir -p "$doc"
    install -m 644 "$root/packaging/deb/copyright" "$doc/copyright"
    changelog | gzip -9n > "$doc/changelog.Debian.gz"
    chmod 644 "$doc/changelog.Debian.gz"
done

# --- symbols and shlibs ---------------------------------------------------------
# Every defined global dynamic symbol as name@version-node, from the library
# as shipped; each needs the upstream version that introduced it.
# The versions come from linker/migrationkit.map, where every symbol sits in
# the node of the release that added it: MIGRATIONKIT_0 is 0.1.0 (the first
# release), MIGRATIONKIT_0.N is 0.N.0. One list, so the package cannot
# disagree with the library's own symbol versions.
node_version() { case $1 in MIGRATIONKIT_0) echo 0.1.0 ;; MIGRATIONKIT_*) echo "${1#MIGRATIONKIT_}.0" ;; esac; }
sed -e 's|/\*.*\*/||' "$root/linker/migrationkit.map" | awk '
    /^[A-Z_0-9.]+[[:space:]]*\{/ { node = $1; print node, node; next }
    /^[[:space:]]*(global|local):/ { next }
    /^[[:space:]]*\}/ { node = ""; next }
    node != "" { gsub(/[;[:space:]]/, ""); if ($0 != "") print $0, node }' |
    while read -r sym node; do echo "$sym $(node_version "$node")"; done > "$tmp/map-versions"
versions=$tmp/map-versions
readelf --dyn-syms -W "$R/$libdir/$realname" |
    awk '$1 ~ /^[0-9]+:$/ && $7 != "UND" && ($5 == "GLOBAL" || $5 == "WEAK") && NF >= 8 {
             n = $8
             if (n ~ /@/) sub(/@@?/, "@", n)
             else if ($7 == "ABS") n = n "@" n   # a version node itself
             else n = n "@Base"                  # unversioned (dpkg-gensymbols spelling)
             print n }' | sort -u > "$tmp/exported"
[ -s "$tmp/exported" ] || die "no versioned global symbols in $realname"
grep -v '^#' "$versions" | awk 'NF' | sort -u > "$tmp/versions"
awk 'NR == FNR { v[$1] = $2; next }
     { split($0, p, "@"); if (p[1] in v) print " " $0, v[p[1]]; else { print p[1] > "/dev/stderr"; bad = 1 } }
     END { exit bad }' "$tmp/versions" "$tmp/exported" > "$tmp/symbol-lines" 2> "$tmp/unlisted" ||
    die "exported but in no node of linker/migrationkit.map: $(paste -sd' ' "$tmp/unlisted")"
gone=$(awk 'NR == FNR { split($0, p, "@"); have[p[1]] = 1; next } !($1 in have) { print $1 }' "$tmp/exported" "$tmp/versions")
[ -z "$gone" ] || die "listed in linker/migrationkit.map but not exported (an ABI break: new SONAME needed): $gone"
newest=$(awk '{ print $2 }' "$tmp/versions" | sort -V | tail -1)
dpkg --compare-versions "$newest" le "$version" || die "linker/migrationkit.map has a node for $newest, newer than the header's $version"
{
    echo "$soname $runtime #MINVER#"
    echo "* Build-Depends-Package: $dev"
    LC_ALL=C sort "$tmp/symbol-lines"
} > "$R/DEBIAN/symbols"
# For tools that ignore symbols files: the newest ABI this package provides.
echo "lib$base $sover $runtime (>= $newest)" > "$R/DEBIAN/shlibs"
# Policy 8.1.1: the dynamic linker's cache must learn about the library.
echo "activate-noawait ldconfig" > "$R/DEBIAN/triggers"

# --- Dependencies of the runtime package (dpkg-shlibdeps wants debian/control) ---
mkdir -p "$tmp/src/debian"
printf 'Source: migrationkit\n\nPackage: %s\nArchitecture: any\n' "$runtime" > "$tmp/src/debian/control"
shdeps=$(cd "$tmp/src" && dpkg-shlibdeps -O -e"$R/$libdir/$realname" 2>"$tmp/shlibdeps.err") ||
    die "dpkg-shlibdeps failed: $(cat "$tmp/shlibdeps.err")"
shdeps=$(sed -n 's/^shlibs:Depends=//p' <<<"$shdeps")
[ -n "$shdeps" ] || die "dpkg-shlibdeps found no dependencies (expected at least libc6)"

# --- Control files and packages ---------------------------------------------------
control() { # package section depends short-description long-description
    cat <<EOF
Package: $1
Source: migrationkit
Version: $debver
Architecture: $arch
Multi-Arch: same
Maintainer: $maintainer
Installed-Size: $(du -s -k --apparent-size --exclude=DEBIAN "$tmp/$1" | cut -f1)
Depends: $3
Section: $2
Priority: optional
Description: $4
$(fold -s -w 72 <<<"$5" | sed 's/ *$//; s/^/ /')
EOF
}
about="MigrationKit moves a running guest's memory and device state from a source VMM process to a destination VMM process: migration thread, bandwidth estimation, a switchover decision against a downtime limit, auto-converge, a checked stream format and the destination loader, behind a small C ABI. The Swift runtime is linked in; only the mk_* functions are exported."
control "$runtime" libs "$shdeps" "precopy live migration for VMMs - shared library" \
    "$about" > "$R/DEBIAN/control"
control "$dev" libdevel "$runtime (= $debver)" \
    "precopy live migration for VMMs - development files" \
    "$about This package has the header, migrationkit.h, and the pkg-config file, migrationkit.pc." \
    > "$D/DEBIAN/control"

mkdir -p "$out"
out=$(cd "$out" && pwd)
for pkg in "$runtime" "$dev"; do
    dir=$tmp/$pkg
    (cd "$dir" && find usr -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum) > "$dir/DEBIAN/md5sums"
    chmod 644 "$dir"/DEBIAN/*
    find "$dir" -type d -exec chmod 755 {} +
    find "$dir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    rm -f "$out/${pkg}"_*.deb
    dpkg-deb --root-owner-group -Zxz --build "$dir" "$out/${pkg}_${debver}_${arch}.deb" >/dev/null
    echo "built $out/${pkg}_${debver}_${arch}.deb"
done
