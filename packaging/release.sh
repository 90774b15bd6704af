#!/usr/bin/env bash
# Builds a release directory that packaging/install.sh installs from:
#
#   aic-<arch>-linux.tar.gz   the three binaries, the systemd units, example configs,
#                             shell completions and man pages
#   SHA256SUMS                its checksum
#   SHA256SUMS.sig            an Ed25519 signature of SHA256SUMS (with --sign-key)
#
#   packaging/release.sh --out DIR [--bin-dir DIR] [--sign-key ~/.ssh/aic-release]
#
# --bin-dir defaults to target/release (build with `cargo build --release`).
# The signing key is an OpenSSH Ed25519 key (ssh-keygen -t ed25519 -f aic-release);
# pin its public half in install.sh with --pubkey or AIC_RELEASE_PUBKEY.
set -euo pipefail
cd "$(dirname "$0")/.."

out="" bin_dir=target/release sign_key=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    --sign-key) sign_key=${2:?--sign-key needs an OpenSSH private key file}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "release.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$out" ] || { echo "release.sh: pass --out DIR" >&2; exit 2; }

case "$(uname -m)" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) echo "release.sh: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/aic/bin" "$stage/aic/systemd" "$stage/aic/config"
for b in aic-relay aic-daemon aic-console; do
  [ -x "$bin_dir/$b" ] || { echo "release.sh: $bin_dir/$b is missing; cargo build --release first" >&2; exit 1; }
  install -m 0755 "$bin_dir/$b" "$stage/aic/bin/"
done
install -m 0644 packaging/aic-daemon.service packaging/aic-relay.service packaging/aic-daemon-user.conf "$stage/aic/systemd/"
for example in packaging/config/*.toml; do
  if [ -f "$example" ]; then install -m 0644 "$example" "$stage/aic/config/"; fi
done
install -m 0644 README.md CHANGELOG.md "$stage/aic/"
packaging/generate.sh "$bin_dir" "$stage/aic/share" >/dev/null

mkdir -p "$out"
archive="aic-$arch-linux.tar.gz"
tar -C "$stage" --owner=0 --group=0 -czf "$out/$archive" aic
(cd "$out" && sha256sum "$archive" >SHA256SUMS)
if [ -n "$sign_key" ]; then
  ssh-keygen -q -Y sign -f "$sign_key" -n aic-release "$out/SHA256SUMS"
fi
echo "release.sh: wrote $out/$archive and SHA256SUMS${sign_key:+ and SHA256SUMS.sig}"
