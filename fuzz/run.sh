#!/usr/bin/env bash
# Runs one fuzz target (or all) for a while, starting from the committed
# seeds. Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly; cargo install cargo-fuzz --locked
# Usage: fuzz/run.sh [smtp_session|imap_prelogin|all] [seconds per target, default 60]
# Crashes land in fuzz/artifacts/<target>/; turn each into a regression test
# (tests/hardening_fuzz_regressions.rs) before fixing it.
set -euo pipefail
cd "$(dirname "$0")"
targets=("${1:-all}")
[ "${targets[0]}" = all ] && targets=(smtp_session imap_prelogin)
secs="${2:-60}"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
