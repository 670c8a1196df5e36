#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a short while (default 20 s each),
# starting from its committed seeds (fuzz/seeds/<target>); a crash fails the
# run, and libFuzzer leaves the input in fuzz/artifacts/<target>/.
#
#   scripts/fuzz-smoke.sh          # 20 s per target
#   scripts/fuzz-smoke.sh 600      # the long run: 10 minutes per target
#
# cargo-fuzz is installed when missing. It needs nightly compiler flags; the
# pinned stable toolchain accepts them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-20}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  echo "==> fuzzing $target for ${seconds} s"
  log="$(mktemp)"
  status=0
  cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY)' "$log" || true
  if [[ $status -ne 0 ]]; then
    tail -n 40 "$log" >&2
    echo "fuzz target $target failed (exit $status): the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  rm -f "$log"
done
