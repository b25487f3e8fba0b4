#!/bin/sh
# The linker of the static musl build (.cargo/config.toml): the C driver with the toolchain's
# rust-lld, in two passes.
#
# Why: a sidecar's resident memory is mostly pages of its own executable. The kernel maps code
# 64 KiB around every page fault, and the ~1 300 functions a running agent executes (3 000 with
# start-up) are spread over the whole 8 MiB of text, so nearly all of it becomes resident.
# Placing them side by side (`--symbol-ordering-file`), those of the steady state first, leaves
# the rest on disk; once start-up is over, src/process_memory.rs unmaps the code and the pages
# the steady state runs come back alone. BENCHMARKS.md has the figures.
#
# The list (scripts/hot-functions.txt, made by scripts/hot-functions.py) names functions
# without the hash rustc appends, so it survives dependency and compiler updates; this script
# matches it against the symbols of this very link. Pass 1 links as asked but keeps symbols;
# its symbol table gives the exact names; pass 2 is the real link, ordered. Without the list
# (or binutils' `nm`) it is a plain rust-lld link.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
hot="$here/hot-functions.txt"
host=$(rustc -vV | sed -n 's/^host: //p')
lld_dir="$(rustc --print sysroot)/lib/rustlib/$host/bin/gcc-ld"
cc=cc

if [ ! -f "$hot" ] || ! command -v nm > /dev/null; then
  exec "$cc" -fuse-ld=lld -B"$lld_dir" "$@"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/token-agent-link.XXXXXX")
trap 'rm -rf "$work"' EXIT

quote() { printf '%s' "$1" | sed "s/'/'\\\\''/g; s/^/'/; s/\$/'/"; }
all_args=""
pass1_args=""
for arg in "$@"; do
  all_args="$all_args $(quote "$arg")"
  case $arg in
    -s | -Wl,-s | -Wl,--strip-all | -Wl,--strip-debug) ;;
    *) pass1_args="$pass1_args $(quote "$arg")" ;;
  esac
done

# Pass 1: the same link to a scratch file, keeping symbols (a later `-o` wins).
eval "set -- $pass1_args"
"$cc" -fuse-ld=lld -B"$lld_dir" "$@" -o "$work/pass1"

# The ordering. A function is listed as its name without what changes with dependency or
# compiler updates (LLVM's `.<n>` suffix of internalized copies, a legacy name's
# `17h<16 hex>E` hash, a v0 name's `Cs<base62>_` crate ids)
# and its size, which tells the instantiations of a generic function apart. A listed name with
# no symbol of its size here (its code changed) takes every symbol of that name.
nm -S --defined-only "$work/pass1" | awk -v list="$hot" '
  BEGIN {
    while ((getline line < list) > 0) {
      if (line == "" || line ~ /^#/) continue
      split(line, f, " ")
      if (!(line in rank)) rank[line] = ++n
      if (!(f[1] in first)) first[f[1]] = n
    }
  }
  NF == 4 && $3 ~ /^[tTwW]$/ {
    key = $4
    sub(/\.[0-9]+$/, "", key)
    if (key ~ /^_R/) gsub(/Cs[0-9A-Za-z]+_/, "Cs_", key)
    else sub(/17h[0-9a-f]+E$/, "E", key)
    if (!(key in first)) next
    size = $2; sub(/^0+/, "", size)
    entry = key " " hex2dec(size)
    if (entry in rank) { print rank[entry], $4; exact[key] = 1 }
    else { loose[++m] = $4; loose_key[m] = key }
  }
  END { for (i = 1; i <= m; i++) if (!(loose_key[i] in exact)) print first[loose_key[i]], loose[i] }
  function hex2dec(h,   i, v) {
    v = 0
    for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1
    return v
  }' | sort -s -n -k1,1 | cut -d' ' -f2 > "$work/order"

# Pass 2: the real link with the original arguments, ordered.
eval "set -- $all_args"
"$cc" -fuse-ld=lld -B"$lld_dir" -Wl,--symbol-ordering-file="$work/order" \
  -Wl,--no-warn-symbol-ordering "$@"
