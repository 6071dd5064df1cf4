#!/usr/bin/env bash
# Print the path of a usable cargo, or nothing (exit 1).
# rustup puts cargo in ~/.cargo/bin and only login shells get it on PATH, so
# a CI shell can miss it; Debian's cargo (scripts/setup.sh) is /usr/bin/cargo.
for c in "${CARGO:-}" "$(command -v cargo 2>/dev/null)" "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin/cargo" \
         /root/.cargo/bin/cargo /usr/bin/cargo; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; exit 0; fi
done
exit 1
