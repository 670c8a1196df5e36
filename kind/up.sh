#!/usr/bin/env bash
# Brings up the kind lab: a kind cluster with Cilium, Istio ambient (sharing
# one root CA with hbone-lab), the Gateway API, the demo application and both
# layers of policy. Safe to run again: every step checks before it acts.
#
# Needs Docker running, and kind, kubectl, helm, the cilium CLI (0.18.x),
# istioctl (1.28.x) and cargo on PATH. Run from anywhere:  kind/up.sh
#
# HBONE_NODE_PROXY=worker2 kind/up.sh also makes hbone-lab the ambient node
# proxy of that worker in ztunnel's place (fed by istiod and istio-cni);
# ztunnel keeps the other worker, and the demo is spread over both.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

CLUSTER=ebpf-lab
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

version_of() { "$@" 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1; }

preflight() {
  step "checking tools"
  need docker "install Docker: https://docs.docker.com/engine/install/"
  need kind "install kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
  need kubectl "install kubectl: https://kubernetes.io/docs/tasks/tools/"
  need helm "install helm: https://helm.sh/docs/intro/install/"
  need cilium "install the cilium CLI 0.18.x: https://docs.cilium.io/en/stable/gettingstarted/k8s-install-default/#install-the-cilium-cli"
  need istioctl "install istioctl $ISTIO_VERSION: curl -L https://istio.io/downloadIstio | ISTIO_VERSION=$ISTIO_VERSION sh -"
  need cargo "install Rust: https://rustup.rs"
  docker info >/dev/null 2>&1 || fail "Docker is not running" "start Docker, then run this again"
  local cli istio
  cli="$(version_of cilium version --client)"
  [[ "$cli" == 0.18.* ]] || fail "cilium CLI $cli found, 0.18.x expected" "install cilium CLI 0.18.x"
  istio="$(version_of istioctl version --remote=false)"
  [[ "$istio" == 1.28.* ]] || fail "istioctl $istio found, 1.28.x expected" "install istioctl $ISTIO_VERSION"
  echo "ok: docker, kind, kubectl, helm, cilium CLI $cli, istioctl $istio, cargo"
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
  kubectl apply -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml"
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
    cargo run --quiet --release --manifest-path "$root/Cargo.toml" -- ca init --out "$CA_DIR"
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
  docker build -f "$here/Dockerfile" -t "$IMAGE" "$root"
  kind load docker-image "$IMAGE" --name "$CLUSTER"
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
  install_cilium
  install_gateway_api
  shared_root
  install_istio
  build_image
  apply_lab
  side_by_side
  node_proxy
  step "done"
  cat <<MSG
The lab is up. Next:
  kubectl -n demo port-forward svc/hello-gateway-istio 8080:80 &
  curl http://localhost:8080/
  cargo run --release -- policy check --manifests kind/manifests   # who may reach whom, and why
  cargo run --release -- kind verify                               # the cluster against that prediction
                                     # (with HBONE_NODE_PROXY: each probe from the other node's proxy)
Walkthrough: kind/README.md.  Tear down: kind/down.sh
MSG
}

main "$@"
