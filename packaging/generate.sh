#!/usr/bin/env bash
# Writes the shell completions and man pages of the three binaries, for the
# .deb (Cargo.toml's [package.metadata.deb] ships them) and release archives.
#
#   packaging/generate.sh [BIN_DIR] [OUT_DIR]
#
# BIN_DIR defaults to target/release, OUT_DIR to target/generated: run it
# after `cargo build --release` and before `cargo deb --no-build`.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
bin_dir=${1:-$target/release}
out=${2:-$target/generated}
mkdir -p "$out"
for b in aic-relay aic-daemon aic-console; do
  [ -x "$bin_dir/$b" ] || { echo "generate.sh: $bin_dir/$b is missing; build first" >&2; exit 1; }
  "$bin_dir/$b" generate completions --out "$out"
  "$bin_dir/$b" generate man --out "$out"
done
echo "generate.sh: completions and man pages in $out"
