#!/usr/bin/env bash
# Runs the fuzz targets for a while, starting from the committed seeds.
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Uses the nightly
# toolchain if installed, else stable with RUSTC_BOOTSTRAP=1 (libFuzzer and
# the sanitizer flags work there too).
# Usage: fuzz/run.sh [smtp_session|imap_prelogin|pop3_prelogin|all] [seconds per target, default 60]
# Crashes land in fuzz/artifacts/<target>/; copy each to
# fuzz/regressions/<target>/ (replayed by tests/hardening_fuzz_regressions.rs)
# before fixing it.
set -euo pipefail
cd "$(dirname "$0")"
targets=("${1:-all}")
[ "${targets[0]}" = all ] && targets=(smtp_session imap_prelogin pop3_prelogin)
secs="${2:-60}"
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  "${fuzz[@]}" run "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
