#!/usr/bin/env bash
# Brings up the kind lab: a kind cluster with Cilium, Istio ambient (sharing
# one root CA with hbone-lab), the Gateway API, the demo application and both
# layers of policy. Safe to run again: every step checks before it acts.
#
# Needs Docker running, and kind (v0.30.x, whose node image the config pins),
# kubectl, the cilium CLI (0.18.x or 0.19.x; it pins Cilium's chart itself)
# and istioctl (1.28.x) on PATH. Nothing is built on the host: the image is
# built by Docker and does the rest. Run from anywhere:  kind/up.sh
#
# HBONE_NODE_PROXY=worker2 kind/up.sh also makes hbone-lab the ambient node
# proxy of that worker in ztunnel's place (fed by istiod and istio-cni);
# ztunnel keeps the other worker, and the demo is spread over both.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

CLUSTER=ebpf-lab
KIND_SERIES=0.30
CILIUM_CLI_SERIES="0.18 0.19"
CILIUM_VERSION=1.18.3
ISTIO_VERSION=1.28.1
GATEWAY_API_VERSION=v1.4.1
IMAGE=hbone-lab:dev
CA_DIR="$here/.cacerts"
# The node label that gives a node to hbone-lab's node proxy (and keeps ztunnel off it).
NODE_PROXY_LABEL=hbone-lab.io/node-proxy
NODE_PROXY_VALUE=hbone-lab
HBONE_NODE_PROXY="${HBONE_NODE_PROXY:-}"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nerror: %s\n' "$1" >&2; [[ $# -gt 1 ]] && printf 'what to do: %s\n' "$2" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed" "$2"
}

# The first x.y.z a command prints, or nothing — never a failure, so that a
# tool whose output is unexpected still reaches the check that explains it.
version_of() { { "$@" 2>/dev/null || true; } | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1 || true; }

# Whether version $1 is in one of the series (x.y) listed in $2.
in_series() {
  local series
  for series in $2; do
    [[ "$1" == "$series".* ]] && return 0
  done
  return 1
}

preflight() {
  step "checking tools"
  need docker "install Docker: https://docs.docker.com/engine/install/"
  need kind "install kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
  need kubectl "install kubectl: https://kubernetes.io/docs/tasks/tools/"
  need cilium "install the cilium CLI: https://docs.cilium.io/en/stable/gettingstarted/k8s-install-default/#install-the-cilium-cli"
  need istioctl "install istioctl $ISTIO_VERSION: curl -L https://istio.io/downloadIstio | ISTIO_VERSION=$ISTIO_VERSION sh -"
  docker info >/dev/null 2>&1 || fail "Docker is not running" "start Docker, then run this again"
  local kind_v cli istio
  kind_v="$(version_of kind version)"
  in_series "$kind_v" "$KIND_SERIES" \
    || fail "kind ${kind_v:-(version unreadable)} found, $KIND_SERIES.x expected: kind supports only the node images of its own release, and kind-config.yaml pins v$KIND_SERIES's" \
      "install kind v$KIND_SERIES.x: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
  cli="$(version_of cilium version --client)"
  in_series "$cli" "$CILIUM_CLI_SERIES" \
    || fail "cilium CLI ${cli:-(version unreadable)} found, one of ${CILIUM_CLI_SERIES// /.x, }.x expected" \
      "install a current cilium CLI (it installs Cilium $CILIUM_VERSION, pinned here)"
  istio="$(version_of istioctl version --remote=false)"
  in_series "$istio" "1.28" \
    || fail "istioctl ${istio:-(version unreadable)} found, 1.28.x expected" "install istioctl $ISTIO_VERSION"
  echo "ok: docker, kind $kind_v, kubectl, cilium CLI $cli, istioctl $istio"
}

create_cluster() {
  step "kind cluster $CLUSTER"
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    echo "exists"
  else
    kind create cluster --config "$here/kind-config.yaml"
  fi
  kubectl config use-context "kind-$CLUSTER" >/dev/null
}

install_cilium() {
  step "Cilium $CILIUM_VERSION (settings Istio ambient needs)"
  if kubectl -n kube-system get daemonset cilium >/dev/null 2>&1; then
    echo "installed"
  else
    # cni.exclusive=false: Istio's CNI agent chains itself after Cilium's.
    # socketLB.hostNamespaceOnly=true: Cilium's socket load-balancing would
    #   otherwise rewrite service addresses inside pods before ztunnel sees them.
    # bpf.masquerade=false: eBPF masquerading breaks ambient's health probes.
    cilium install --version "$CILIUM_VERSION" \
      --set cni.exclusive=false \
      --set socketLB.hostNamespaceOnly=true \
      --set bpf.masquerade=false
  fi
  cilium status --wait
}

install_gateway_api() {
  step "Gateway API $GATEWAY_API_VERSION CRDs"
  kubectl apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml"
}

# The plug-in CA files from kind/.cacerts as secret `cacerts` in namespace $1
# (created if missing) — istiod reads it in istio-system, hbone-lab's CA in hbone-demo.
cacerts_secret() {
  kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n "$1" create secret generic cacerts \
    --from-file=ca-cert.pem="$CA_DIR/ca-cert.pem" \
    --from-file=ca-key.pem="$CA_DIR/ca-key.pem" \
    --from-file=root-cert.pem="$CA_DIR/root-cert.pem" \
    --from-file=cert-chain.pem="$CA_DIR/cert-chain.pem" \
    --dry-run=client -o yaml | kubectl apply -f -
}

shared_root() {
  step "plug-in CA: one root for istiod and hbone-lab's CA"
  if [[ ! -f "$CA_DIR/root-cert.pem" ]]; then
    # Made by the image just built, as you: no toolchain on the host.
    mkdir -p "$CA_DIR"
    docker run --rm --user "$(id -u):$(id -g)" -v "$CA_DIR:/cacerts" "$IMAGE" ca init --out /cacerts
  fi
  cacerts_secret istio-system
}

install_istio() {
  step "Istio $ISTIO_VERSION, ambient profile"
  # istio-cni sends pods' DNS to ztunnel's DNS proxy (15053) unless told not
  # to; hbone-lab has no DNS proxy, so with HBONE_NODE_PROXY it is turned off.
  local args=(--set profile=ambient --skip-confirmation)
  [[ -n "$HBONE_NODE_PROXY" ]] && args+=(--set values.cni.ambient.dnsCapture=false)
  if ! kubectl -n istio-system get daemonset ztunnel >/dev/null 2>&1; then
    istioctl install "${args[@]}"
  elif [[ -n "$HBONE_NODE_PROXY" && "$(kubectl -n istio-system get configmap istio-cni-config \
      -o jsonpath='{.data.AMBIENT_DNS_CAPTURE}')" != "false" ]]; then
    echo "installed with DNS capture: installing again without it"
    istioctl install "${args[@]}"
    kubectl -n istio-system rollout restart daemonset/istio-cni-node
    kubectl -n istio-system rollout status daemonset/istio-cni-node --timeout=300s
  else
    echo "installed"
  fi
  kubectl -n istio-system rollout status daemonset/ztunnel --timeout=300s
  kubectl -n istio-system rollout status deployment/istiod --timeout=300s
}

build_image() {
  step "image $IMAGE (built from this repository, loaded into kind)"
  # No provenance attestation: with Docker's containerd image store it makes
  # the image a manifest list that `kind load docker-image` cannot import.
  docker build --provenance=false -f "$here/Dockerfile" -t "$IMAGE" "$root"
  if ! kind load docker-image "$IMAGE" --name "$CLUSTER"; then
    echo "kind load docker-image failed; loading it as an archive instead"
    local archive
    archive="$(mktemp -d)/hbone-lab.tar"
    docker save "$IMAGE" -o "$archive"
    kind load image-archive "$archive" --name "$CLUSTER"
    rm -rf "$(dirname "$archive")"
  fi
  # A rebuilt image under the same tag reaches running pods (imagePullPolicy:
  # Never) only when they restart.
  kubectl -n hbone-demo get deployment hbone-ca >/dev/null 2>&1 \
    && kubectl -n hbone-demo rollout restart deployment/hbone-ca deployment/hello-app
  kubectl -n istio-system get daemonset hbone-node-proxy >/dev/null 2>&1 \
    && kubectl -n istio-system rollout restart daemonset/hbone-node-proxy
  return 0
}

apply_lab() {
  step "the demo application"
  kubectl apply -f "$here/manifests/"
  step "policies (from policies/ — the one copy)"
  kubectl apply -f "$root/policies/istio/"
  kubectl apply -f "$root/policies/cilium/"
  step "waiting for the pods"
  kubectl -n demo rollout status deployment/postgres --timeout=300s
  kubectl -n demo rollout status deployment/hello-app --timeout=300s
  kubectl -n demo rollout status deployment/worker-app --timeout=300s
  kubectl -n demo wait --for=condition=programmed gateway/hello-gateway --timeout=300s
}

side_by_side() {
  step "side by side: hbone-lab's CA and proxy in namespace hbone-demo"
  cacerts_secret hbone-demo
  kubectl apply -f "$here/side-by-side/"
  kubectl apply -f "$root/policies/side-by-side/"
  kubectl -n hbone-demo rollout status deployment/hbone-ca --timeout=300s
  kubectl -n hbone-demo rollout status deployment/hello-app --timeout=300s
}

# The kind node HBONE_NODE_PROXY names: `worker2` or `ebpf-lab-worker2`.
node_named() {
  local want="$1" name
  for name in $(kubectl get nodes -o name); do
    name="${name#node/}"
    if [[ "$name" == "$want" || "$name" == "$CLUSTER-$want" ]]; then
      echo "$name"
      return 0
    fi
  done
  fail "no node $want in the cluster" "use one of: $(kubectl get nodes -o name | tr '\n' ' ')"
}

# A strategic-merge patch pinning a deployment's pods to node $1.
pin_to() {
  printf '{"spec":{"template":{"spec":{"nodeSelector":{"kubernetes.io/hostname":"%s"}}}}}' "$1"
}

node_proxy() {
  [[ -n "$HBONE_NODE_PROXY" ]] || return 0
  local node other
  node="$(node_named "$HBONE_NODE_PROXY")"
  other="$(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o name \
    | sed 's|^node/||' | grep -vx "$node" | head -n1)"
  [[ -n "$other" ]] || fail "no second worker for ztunnel" "kind/kind-config.yaml has two workers: recreate the cluster (kind/down.sh, then kind/up.sh)"
  step "hbone-lab as the ambient node proxy of $node (ztunnel keeps $other)"
  kubectl label node "$node" "$NODE_PROXY_LABEL=$NODE_PROXY_VALUE" --overwrite
  # ztunnel's DaemonSet leaves the node, so istio-cni hands its pods to hbone-lab.
  kubectl -n istio-system patch daemonset ztunnel --type=strategic -p \
    "{\"spec\":{\"template\":{\"spec\":{\"affinity\":{\"nodeAffinity\":{\"requiredDuringSchedulingIgnoredDuringExecution\":{\"nodeSelectorTerms\":[{\"matchExpressions\":[{\"key\":\"$NODE_PROXY_LABEL\",\"operator\":\"NotIn\",\"values\":[\"$NODE_PROXY_VALUE\"]}]}]}}}}}}}"
  kubectl -n istio-system rollout status daemonset/ztunnel --timeout=300s
  kubectl apply -f "$here/node-proxy/"
  kubectl -n istio-system rollout status daemonset/hbone-node-proxy --timeout=300s
  step "the demo across both nodes: hello-app on $node, postgres and worker-app on $other"
  kubectl -n demo patch deployment hello-app -p "$(pin_to "$node")"
  kubectl -n demo patch deployment postgres -p "$(pin_to "$other")"
  kubectl -n demo patch deployment worker-app -p "$(pin_to "$other")"
  for d in hello-app postgres worker-app; do
    kubectl -n demo rollout status "deployment/$d" --timeout=300s
  done
}

main() {
  preflight
  create_cluster
  build_image
  install_cilium
  install_gateway_api
  shared_root
  install_istio
  apply_lab
  side_by_side
  node_proxy
  step "done"
  cat <<MSG
The lab is up. Next:
  kubectl -n demo port-forward svc/hello-gateway-istio 8080:80 &
  curl http://localhost:8080/
  cd "$root"
  cargo run --release -- policy check --manifests kind/manifests   # who may reach whom, and why
  cargo run --release -- kind verify                               # the cluster against that prediction
                                     # (with HBONE_NODE_PROXY: each probe from the other node's proxy)
Walkthrough: $here/README.md.  Tear down: $here/down.sh
MSG
}

# Sourced (by the static checks) it only defines its functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
