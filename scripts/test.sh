#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or a developer's laptop.
#
# As root on Debian it first installs what the tests need and is missing:
# PostgreSQL server binaries, iptables, iproute2, procps, openssl, the
# shell linter, Chromium (the status page is checked in a real browser) and
# Wireshark's tshark (a captured HBONE hop is decrypted and decoded).
# Then: format check, clippy (warnings are errors), every test with
# cargo-nextest (or cargo test where nextest is not installed), and a short
# run of every fuzz target (scripts/fuzz-smoke.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

need_packages=()
have_pg_server() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null; }
have_pg_server || need_packages+=(postgresql)
command -v iptables >/dev/null || need_packages+=(iptables)
command -v ip >/dev/null || need_packages+=(iproute2)
command -v sysctl >/dev/null || need_packages+=(procps)
command -v nsenter >/dev/null || need_packages+=(util-linux)
command -v openssl >/dev/null || need_packages+=(openssl)
command -v shellcheck >/dev/null || need_packages+=(shellcheck)
command -v chromium >/dev/null || need_packages+=(chromium fonts-dejavu-core)
command -v tshark >/dev/null || need_packages+=(tshark)
command -v c++ >/dev/null || need_packages+=(g++)   # libFuzzer, for the fuzz smoke run
command -v valgrind >/dev/null || need_packages+=(valgrind)   # bench --instructions (callgrind)
command -v strace >/dev/null || need_packages+=(strace)       # bench --instructions (system calls)

if ((${#need_packages[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing ${need_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
  else
    echo "missing: ${need_packages[*]} — install them (as root: apt-get install ${need_packages[*]}); the tests that need them are #[ignore]d and show as skipped unless run as root" >&2
  fi
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
say "cargo clippy -p hbone-proxy (the proxy as a library: no benchmark rungs)"
cargo clippy -p hbone-proxy --all-targets --quiet -- -D warnings

say "cargo doc (warnings are errors: the intra-doc links stay true)"
RUSTDOCFLAGS="-D warnings" K8S_OPENAPI_ENABLED_VERSION=1.34 cargo doc --workspace --no-deps --quiet

# Licences, duplicate crates and crate sources (deny.toml says why each
# exception exists). The advisories check needs the RustSec database from
# GitHub, which these machines cannot reach: run `cargo deny check
# advisories` where the network allows.
if command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked --quiet; then
  say "cargo deny check licenses bans sources"
  cargo deny --log-level error check licenses bans sources
else
  echo "cargo-deny cannot be installed here: the licence, ban and source checks are skipped" >&2
fi

# The real control plane's programs (etcd, kube-apiserver, istiod, istioctl),
# built from their Go modules into a cache (minutes the first time, seconds
# after). Where they cannot be built, the tests that need them (each has
# "istiod" in its name) are skipped.
have_control_plane=false
if [[ -n "${ISTIOD_BIN:-}" && -n "${KUBE_APISERVER_BIN:-}" && -n "${ETCD_BIN:-}" ]]; then
  have_control_plane=true
elif command -v go >/dev/null; then
  say "building etcd, kube-apiserver, istiod and istioctl from their Go modules (cached)"
  if scripts/control-plane-peers.sh >/dev/null; then
    have_control_plane=true
  else
    echo "the control plane's programs could not be built (above): the istiod tests are skipped" >&2
  fi
else
  echo "no 'go': the tests against the real istiod and kube-apiserver are skipped (install Go, or set ETCD_BIN, KUBE_APISERVER_BIN and ISTIOD_BIN)" >&2
fi

# fortio, the benchmark's independent load generator (bench --fortio),
# built from its Go module into the same cache: about 40 s the first time
# on two cores, nothing after. Where it cannot be built, the cross-check's
# test prints that it is skipped, and why.
if [[ -z "${FORTIO_BIN:-}" ]] && command -v go >/dev/null; then
  say "building fortio from its Go module (cached)"
  scripts/bench-peers.sh >/dev/null || echo "fortio could not be built (above): the fortio cross-check's test is skipped" >&2
fi

# Tests that drive a real ztunnel (each has "ztunnel" in its name), tests
# that need root and tests that need a tool installed above (PostgreSQL,
# Chromium, openssl, shellcheck) are #[ignore]d, so that where they cannot
# run they show as skipped. As root they run; the ztunnel ones only when a ztunnel binary is
# given: ZTUNNEL_BIN=/path/to/ztunnel scripts/test.sh
# As root every ignored test runs, but those whose programs are missing.
left_out=()
[[ -n "${ZTUNNEL_BIN:-}" ]] || left_out+=(ztunnel)
$have_control_plane || left_out+=(istiod)
nextest_ignored=()
test_ignored=()
if [[ -n "${ZTUNNEL_BIN:-}" ]]; then
  say "ZTUNNEL_BIN=$ZTUNNEL_BIN: the ztunnel tests run too"
else
  echo "ZTUNNEL_BIN is not set: the tests against a real ztunnel are skipped" >&2
fi
if [[ $(id -u) -eq 0 ]]; then
  filter=""
  test_ignored=(-- --include-ignored)
  for name in "${left_out[@]}"; do
    filter+="${filter:+ and }not test(/$name/)"
    test_ignored+=(--skip "$name")
  done
  nextest_ignored=(--run-ignored all)
  [[ -z "$filter" ]] || nextest_ignored+=(-E "$filter")
else
  echo "not root: the namespace, ztunnel and istiod tests are skipped" >&2
fi

if cargo nextest --version >/dev/null 2>&1; then
  say "cargo nextest run"
  cargo nextest run --workspace --no-fail-fast "${nextest_ignored[@]}" "$@"
else
  say "cargo test (cargo-nextest not installed)"
  cargo test --workspace --no-fail-fast "$@" "${test_ignored[@]}"
fi

# Every fuzz target for a while (HBONE_FUZZ_SECONDS each, default 20; 0
# skips), where cargo-fuzz can be installed.
fuzz_seconds="${HBONE_FUZZ_SECONDS:-20}"
if [[ "$fuzz_seconds" != 0 ]]; then
  if command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet; then
    say "fuzz smoke run (${fuzz_seconds} s per target)"
    scripts/fuzz-smoke.sh "$fuzz_seconds"
  else
    echo "cargo-fuzz cannot be installed here: the fuzz smoke run is skipped" >&2
  fi
fi
