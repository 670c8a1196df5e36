#!/usr/bin/env bash
# Deletes the kind lab's cluster (everything in it goes with it). The shared
# root CA in kind/.cacerts is kept so that a new cluster trusts the same root;
# pass --all to delete it too.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
CLUSTER=ebpf-lab

command -v kind >/dev/null 2>&1 || { echo "error: kind is not installed" >&2; exit 1; }

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  printf '==> deleting kind cluster %s\n' "$CLUSTER"
  kind delete cluster --name "$CLUSTER"
else
  echo "no kind cluster named $CLUSTER"
fi

if [[ "${1:-}" == "--all" ]]; then
  printf '==> deleting the shared root CA in %s\n' "$here/.cacerts"
  rm -rf "$here/.cacerts"
fi
