#!/usr/bin/env bash
# Builds the real control plane's programs from their Go modules, the way
# `cargo install` installs a tool: etcd, kube-apiserver, istiod
# (pilot-discovery) and istioctl. No source of theirs is kept in this
# repository; `go` fetches the modules from the Go module proxy into its own
# cache, and the binaries land in one folder per set of versions:
#
#   ${HBONE_PEERS_DIR:-~/.cache/hbone-lab/peers}/<versions>/{etcd,kube-apiserver,pilot-discovery,istioctl}
#   ...and crd-all.gen.yaml, the Istio CRDs of the same istio module
#
# A second run finds them and takes seconds. The last line printed is the
# folder, so `dir=$(scripts/control-plane-peers.sh | tail -1)` works.
#
# Usage: scripts/control-plane-peers.sh [--only etcd|kube-apiserver|istiod|istioctl]... [--print-dir]
#
# Each build takes minutes on two cores (kube-apiserver about 6-10, istiod
# about 5-8) and a few GB of memory; progress is printed.
set -euo pipefail

# The versions are pinned in one place, which hbone-lab reads too.
# shellcheck disable=SC1091 # a file of plain KEY=value lines, read at run time
source "$(dirname "$0")/../control-plane/peers.env"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'control-plane-peers: %s\n' "$*" >&2; exit 1; }

only=()
print_dir=false
while (($#)); do
  case "$1" in
    --only) only+=("$2"); shift 2 ;;
    --print-dir) print_dir=true; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

tag="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_istio-${ISTIO_VERSION##*-}"
root="${HBONE_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hbone-lab/peers}"
out="$root/$tag"
if $print_dir; then echo "$out"; exit 0; fi

command -v go >/dev/null || die "'go' is not installed: install Go 1.24 or newer (Debian: apt-get install golang-go, or go.dev/dl), or supply the programs yourself with --etcd/--kube-apiserver/--istiod (or ETCD_BIN, KUBE_APISERVER_BIN, ISTIOD_BIN)"
mkdir -p "$out"
wanted() { ((${#only[@]} == 0)) && return 0; local w; for w in "${only[@]}"; do [[ "$w" == "$1" ]] && return 0; done; return 1; }

# A wrapper module per program: go.mod names the module wanted at its pinned
# version; `go build <package>` then builds its main package from the module
# cache. `go install pkg@version` is refused for modules whose go.mod has
# `replace` lines (etcd's server, kubernetes), hence the wrapper.
wrapper() {
  local dir="$out/.build/$1"
  rm -rf "$dir"; mkdir -p "$dir"
  printf 'module hbonelab.local/peers/%s\n\ngo 1.24\n' "$1" >"$dir/go.mod"
  printf '%s\n' "$dir"
}

timed() {
  local what="$1"; shift
  local start=$SECONDS
  say "$what"
  # Each step runs in a subshell with errexit, so the first failing command
  # ends it (errexit is off inside an `if`, hence the plain status).
  local rc=0
  set +e; (set -e; "$@") >"$out/.build/$what.log" 2>&1; rc=$?; set -e
  if ((rc != 0)); then
    tail -n 30 "$out/.build/$what.log" >&2
    die "$what failed (full log: $out/.build/$what.log)"
  fi
  say "$what: done in $((SECONDS - start)) s"
}

build_etcd() {
  cd "$(wrapper etcd)"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go build -trimpath -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$out/etcd.tmp" "$out/etcd"
}

build_kube_apiserver() {
  local dir gomod minor="v0.${KUBERNETES_VERSION#v1.}"
  dir=$(wrapper kube-apiserver)
  cd "$dir"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces
  # them with ./staging/...; outside its tree each must be replaced by its
  # published twin v0.<minor>.<patch>. The list is read from that tag's go.mod.
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f "$gomod" ]] || { echo "no go.mod for k8s.io/kubernetes@$KUBERNETES_VERSION"; return 1; }
  { printf 'require k8s.io/kubernetes %s\n' "$KUBERNETES_VERSION"
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk -v v="$minor" '{print "replace " $1 " => " $1 " " v}'
  } >>go.mod
  go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION"
  # Without these the program says it is v0.0.0, which clients such as
  # istiod read to decide which APIs exist.
  local v="k8s.io/component-base/version" m
  m=$(cut -d. -f2 <<<"$KUBERNETES_VERSION")
  go build -trimpath -ldflags "-s -w -X $v.gitVersion=$KUBERNETES_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$m -X $v.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION" \
    -o "$out/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
}

istio_module() {
  local dir; dir=$(wrapper istio)
  (cd "$dir" && go get "istio.io/istio@$ISTIO_VERSION" >/dev/null) || return 1
  printf '%s\n' "$dir"
}

build_istio() {
  local program="$1" package="$2" dir
  dir="$out/.build/istio"
  [[ -f "$dir/go.mod" ]] && grep -q "istio.io/istio $ISTIO_VERSION" "$dir/go.mod" || dir=$(istio_module) || return 1
  (cd "$dir" &&
    go get "$package@$ISTIO_VERSION" &&
    go build -trimpath -ldflags "-s -w -X istio.io/istio/pkg/version.buildVersion=${ISTIO_VERSION}" -o "$out/$program.tmp" "$package") &&
  mv "$out/$program.tmp" "$out/$program"
}

istio_crds() {
  local dir; dir=$(go mod download -json "istio.io/istio@$ISTIO_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [[ -f "$dir/manifests/charts/base/files/crd-all.gen.yaml" ]] || return 1
  install -m 0644 "$dir/manifests/charts/base/files/crd-all.gen.yaml" "$out/crd-all.gen.yaml"
}

mkdir -p "$out/.build"
say "peers folder: $out"
if wanted etcd && [[ ! -x "$out/etcd" ]]; then timed "etcd $ETCD_VERSION" build_etcd; fi
if wanted kube-apiserver && [[ ! -x "$out/kube-apiserver" ]]; then timed "kube-apiserver $KUBERNETES_VERSION" build_kube_apiserver; fi
if wanted istiod && [[ ! -x "$out/pilot-discovery" ]]; then timed "istiod (pilot-discovery) $ISTIO_VERSION" build_istio pilot-discovery istio.io/istio/pilot/cmd/pilot-discovery; fi
if wanted istioctl && [[ ! -x "$out/istioctl" ]]; then timed "istioctl $ISTIO_VERSION" build_istio istioctl istio.io/istio/istioctl/cmd/istioctl; fi
if [[ ! -f "$out/crd-all.gen.yaml" ]]; then timed "Istio CRDs" istio_crds; fi
rm -rf "$out/.build/etcd" "$out/.build/kube-apiserver"
echo "$out"
