#!/usr/bin/env bash
# Builds the benchmark's independent load generator, fortio, from its Go
# module (`go install`, as `cargo install` installs a tool) into a folder
# named after the pinned version (benches/peers.env):
#
#   ${HBONE_PEERS_DIR:-~/.cache/hbone-lab/peers}/fortio-<version>/fortio
#
# `hbone-lab bench --fortio` finds it there (or takes --fortio PATH, or
# FORTIO_BIN). A bench peer, not a control-plane program, hence not
# scripts/control-plane-peers.sh; the folder root is the same.
#
# About 40 s the first time on two cores (the module download included), a
# second run finds it and returns at once. The last line printed is the
# binary's path, so `FORTIO_BIN=$(scripts/bench-peers.sh | tail -1)` works.
#
# Usage: scripts/bench-peers.sh [--print-path]
set -euo pipefail

# shellcheck disable=SC1091 # a file of plain KEY=value lines, read at run time
source "$(dirname "$0")/../benches/peers.env"

die() { printf 'bench-peers: %s\n' "$*" >&2; exit 1; }

print_path=false
case "${1:-}" in
  "") ;;
  --print-path) print_path=true ;;
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac

root="${HBONE_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hbone-lab/peers}"
out="$root/fortio-$FORTIO_VERSION"
if $print_path; then echo "$out/fortio"; exit 0; fi

if [[ ! -x "$out/fortio" ]]; then
  command -v go >/dev/null || die "'go' is not installed: install Go 1.23 or newer (Debian: apt-get install golang-go, or go.dev/dl), or give hbone-lab a fortio binary yourself with --fortio PATH (or FORTIO_BIN)"
  mkdir -p "$out"
  printf '==> fortio %s into %s\n' "$FORTIO_VERSION" "$out" >&2
  start=$SECONDS
  # GOBIN takes the binary; the module and build caches stay go's own.
  GOBIN="$out/.build" go install -trimpath "fortio.org/fortio@$FORTIO_VERSION" ||
    die "go install fortio.org/fortio@$FORTIO_VERSION failed (above)"
  mv "$out/.build/fortio" "$out/fortio"
  rmdir "$out/.build" 2>/dev/null || true
  printf '==> fortio: done in %d s\n' "$((SECONDS - start))" >&2
fi
echo "$out/fortio"
