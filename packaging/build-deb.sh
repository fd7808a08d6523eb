#!/usr/bin/env bash
# Builds the Debian package: the release binary, then the man pages and
# completions it generates from its own clap definition (target/generated/),
# then `cargo deb`. Prints the .deb's path last. Needs cargo-deb
# (`cargo install --locked cargo-deb --version 3.6.0`).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bin mailbridge
bin=target/release/mailbridge
rm -rf target/generated
"$bin" generate man target/generated/man >/dev/null
for shell in bash zsh fish; do
  "$bin" generate completions "$shell" target/generated/completions >/dev/null
done
# packaging/deb/ must be what the binary derives from relay.toml and the unit
# (tests/it/packaging.rs checks the same; this catches a stale checkout early).
"$bin" generate packaging target/generated/packaging >/dev/null
for f in relay.toml mailbridge.service; do
  cmp -s "target/generated/packaging/$f" "packaging/deb/$f" || {
    echo "packaging/deb/$f is stale: run  $bin generate packaging packaging/deb" >&2
    exit 1
  }
done
# --no-build: the binary above is the one the man pages came from. --strip:
# the line tables (for backtraces) would make the binary 50 MB instead of ~10.
cargo deb --no-build --locked --strip --output target/debian/ 2>&1 | tail -n 1
