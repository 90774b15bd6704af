#!/usr/bin/env bash
# Installs aic from a release (or from this checkout) and starts its services.
# Run as root.
#
#   install.sh --base-url URL --relay wss://relay.example.com [--pubkey 'ssh-ed25519 AAAA…']
#   install.sh --from-source --relay wss://relay.example.com
#   install.sh --base-url URL --with-relay [--relay-listen 127.0.0.1:8080]
#   install.sh --uninstall [--purge]
#
# Options:
#   --base-url URL       where the release lives: URL/aic-<arch>-linux.tar.gz and URL/SHA256SUMS
#                        (also AIC_RELEASE_URL)
#   --pubkey KEY         the release signing key, pinned ("ssh-ed25519 AAAA…"; also AIC_RELEASE_PUBKEY):
#                        URL/SHA256SUMS.sig must then verify with it
#   --relay URL          the relay this machine's daemon dials; starts the aic-daemon service
#   --mode MODE          supervised (the default: every command waits for the operator), auto or disabled
#   --with-relay         also install and start the relay service, as its own user aic-relay
#   --relay-listen ADDR  the relay service's listen address (default 127.0.0.1:8080)
#   --from-source        build with cargo from this checkout instead of downloading
#   --uninstall          stop and remove the services and binaries; keep the state (the machine's code)
#   --purge              with --uninstall: remove the state, the config, group aic and user aic-relay too
#
# Nothing is installed unless the archive's SHA-256 matches SHA256SUMS and,
# with a pinned key, SHA256SUMS carries a valid signature.
set -euo pipefail

bin_dir=/usr/local/bin
unit_dir=/etc/systemd/system
share_dir=/usr/local/share/aic
base_url=${AIC_RELEASE_URL:-} pubkey=${AIC_RELEASE_PUBKEY:-} relay_url="" mode=""
with_relay=false relay_listen=127.0.0.1:8080 from_source=false uninstall=false purge=false

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --base-url) base_url=${2:?--base-url needs a URL}; shift 2 ;;
      --pubkey) pubkey=${2:?--pubkey needs a key}; shift 2 ;;
      --relay) relay_url=${2:?--relay needs the relay URL}; shift 2 ;;
      --mode) mode=${2:?--mode needs supervised, auto or disabled}; shift 2 ;;
      --with-relay) with_relay=true; shift ;;
      --relay-listen) relay_listen=${2:?--relay-listen needs an address}; shift 2 ;;
      --from-source) from_source=true; shift ;;
      --uninstall) uninstall=true; shift ;;
      --purge) purge=true; shift ;;
      -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
  done
  case "$mode" in ""|supervised|auto|disabled) ;; *) die "--mode must be supervised, auto or disabled" ;; esac
  if $purge && ! $uninstall; then die "--purge goes with --uninstall"; fi
  if ! $uninstall && ! $from_source && [ -z "$base_url" ]; then
    die "pass --base-url URL (or set AIC_RELEASE_URL) to install a release, or --from-source to build this checkout"
  fi
}

arch() {
  case "$(uname -m)" in
    x86_64|amd64) echo x86_64 ;;
    aarch64|arm64) echo aarch64 ;;
    *) die "no release for $(uname -m); build it with --from-source" ;;
  esac
}

fetch() {
  if command -v curl >/dev/null; then
    curl -fsSL --retry 2 -o "$2" "$1" || die "could not download $1"
  elif command -v wget >/dev/null; then
    wget -q -O "$2" "$1" || die "could not download $1"
  else
    die "neither curl nor wget is installed: apt-get install curl"
  fi
}

# Downloads the release into $1 and checks it; dies before anything is installed on a mismatch.
download_verified() {
  local dir=$1 archive
  archive="aic-$(arch)-linux.tar.gz"
  base_url=${base_url%/}
  fetch "$base_url/SHA256SUMS" "$dir/SHA256SUMS"
  fetch "$base_url/$archive" "$dir/$archive"
  if [ -n "$pubkey" ]; then
    fetch "$base_url/SHA256SUMS.sig" "$dir/SHA256SUMS.sig"
    command -v ssh-keygen >/dev/null || die "checking the signature needs ssh-keygen: apt-get install openssh-client"
    printf 'aic-release %s\n' "$pubkey" >"$dir/allowed_signers"
    ssh-keygen -q -Y verify -f "$dir/allowed_signers" -I aic-release -n aic-release -s "$dir/SHA256SUMS.sig" \
      <"$dir/SHA256SUMS" >/dev/null 2>&1 \
      || die "SHA256SUMS is not signed by the pinned release key: nothing was installed"
  else
    case "$base_url" in
      https://*) ;;
      *) say "warning: no release key pinned (--pubkey) and $base_url is not HTTPS: the download is only as safe as the network" ;;
    esac
  fi
  grep -q " \*\{0,1\}$archive\$" "$dir/SHA256SUMS" || die "SHA256SUMS does not list $archive: nothing was installed"
  (cd "$dir" && grep " \*\{0,1\}$archive\$" SHA256SUMS | sha256sum -c --quiet >/dev/null 2>&1) \
    || die "$archive does not match its SHA-256 in SHA256SUMS (a broken or tampered download): nothing was installed"
  tar -C "$dir" -xzf "$dir/$archive"
}

build_from_source() {
  local dir=$1 src
  src=$(cd "$(dirname "$0")/.." && pwd)
  command -v cargo >/dev/null || die "--from-source needs cargo (https://rustup.rs)"
  (cd "$src" && cargo build --release --locked --bins)
  mkdir -p "$dir/aic/bin" "$dir/aic/systemd"
  cp "$src"/target/release/aic-{relay,daemon,console} "$dir/aic/bin/"
  "$src/packaging/generate.sh" "$src/target/release" "$dir/aic/share" >/dev/null
  cp "$src"/packaging/aic-daemon.service "$src"/packaging/aic-relay.service "$src"/packaging/aic-daemon-user.conf "$dir/aic/systemd/"
  mkdir -p "$dir/aic/config"
  for example in "$src"/packaging/config/*.toml; do
    if [ -f "$example" ]; then cp "$example" "$dir/aic/config/"; fi
  done
}

install_files() {
  local from=$1/aic
  install -m 0755 "$from"/bin/aic-relay "$from"/bin/aic-daemon "$from"/bin/aic-console "$bin_dir/"
  local unit
  for unit in aic-daemon.service aic-relay.service; do
    # The units name the packaged path, /usr/bin; these binaries live in $bin_dir.
    sed "s|^ExecStart=/usr/bin/|ExecStart=$bin_dir/|" "$from/systemd/$unit" >"$unit_dir/$unit"
    chmod 0644 "$unit_dir/$unit"
  done
  install -d -m 0755 "$share_dir"
  install -m 0644 "$from"/systemd/aic-daemon-user.conf "$share_dir/"
  for example in "$from"/config/*.toml; do
    if [ -f "$example" ]; then install -m 0644 "$example" "$share_dir/"; fi
  done
  install_docs "$from/share"
  getent group aic >/dev/null || groupadd --system aic
  systemctl daemon-reload
  say "installed aic-relay, aic-daemon and aic-console in $bin_dir"
}

# Man pages and bash completions, when the release has them.
install_docs() {
  local from=$1 b
  [ -d "$from" ] || return 0
  install -d -m 0755 /usr/local/share/man/man1 /usr/local/share/bash-completion/completions
  for b in aic-relay aic-daemon aic-console; do
    if [ -f "$from/$b.1" ]; then install -m 0644 "$from/$b.1" /usr/local/share/man/man1/; fi
    if [ -f "$from/$b.bash" ]; then install -m 0644 "$from/$b.bash" "/usr/local/share/bash-completion/completions/$b"; fi
  done
}

# Waits for the daemon to print its code in the journal, and shows it.
show_code() {
  local line=""
  for _ in $(seq 300); do
    line=$(journalctl -u aic-daemon --no-pager -o cat --since "$1" 2>/dev/null | grep -E '^Session: AIC-' | tail -n 1) || true
    [ -n "$line" ] && break
    systemctl is-failed --quiet aic-daemon && break
    sleep 0.1
  done
  if [ -n "$line" ]; then
    echo "$line"
    say "give that code to your AI client; watch and approve its commands with: sudo aic-console"
  else
    say "aic-daemon has not registered yet; see: journalctl -u aic-daemon"
  fi
}

start_daemon() {
  local since
  install -d -m 0755 /etc/aic-daemon
  if [ ! -f /etc/aic-daemon/config.toml ]; then
    { printf 'relay = "%s"\n' "$relay_url"; [ -z "$mode" ] || printf 'mode = "%s"\n' "$mode"; } >/etc/aic-daemon/config.toml
  else
    say "keeping the existing /etc/aic-daemon/config.toml"
  fi
  since=$(date '+%Y-%m-%d %H:%M:%S')
  systemctl enable --quiet aic-daemon
  systemctl restart aic-daemon
  show_code "$since"
  say "let an operator use the console without sudo: usermod -aG aic USER (then log in again)"
}

start_relay() {
  getent passwd aic-relay >/dev/null \
    || useradd --system --home-dir /var/lib/aic-relay --no-create-home --shell /usr/sbin/nologin aic-relay
  install -d -m 0755 "$unit_dir/aic-relay.service.d"
  printf '[Service]\nEnvironment=AIC_RELAY_LISTEN=%s\n' "$relay_listen" >"$unit_dir/aic-relay.service.d/listen.conf"
  systemctl daemon-reload
  systemctl enable --quiet aic-relay
  systemctl restart aic-relay
  say "aic-relay runs on $relay_listen; put a TLS proxy in front of it (see the README)"
}

remove() {
  local unit
  for unit in aic-daemon aic-relay; do
    systemctl disable --now --quiet "$unit" 2>/dev/null || true
    rm -rf "$unit_dir/$unit.service" "$unit_dir/$unit.service.d"
  done
  systemctl daemon-reload
  rm -f "$bin_dir"/aic-relay "$bin_dir"/aic-daemon "$bin_dir"/aic-console
  rm -f /usr/local/share/man/man1/aic-{relay,daemon,console}.1 /usr/local/share/bash-completion/completions/aic-{relay,daemon,console}
  rm -rf "$share_dir"
  if $purge; then
    rm -rf /var/lib/aic-daemon /var/lib/aic-relay /etc/aic-daemon
    getent passwd aic-relay >/dev/null && userdel aic-relay
    getent group aic >/dev/null && groupdel aic
    say "removed aic, its state (the machine's code), its config, group aic and user aic-relay"
  else
    say "removed aic; kept /var/lib/aic-daemon (the machine's code), /var/lib/aic-relay and /etc/aic-daemon (--purge removes them)"
  fi
}

main() {
  parse_args "$@"
  [ "$(id -u)" = 0 ] || die "run as root (sudo $0 $*)"
  if $uninstall; then remove; return; fi
  work_dir=$(mktemp -d)
  trap 'rm -rf "$work_dir"' EXIT
  if $from_source; then build_from_source "$work_dir"; else download_verified "$work_dir"; fi
  install_files "$work_dir"
  if $with_relay; then start_relay; fi
  if [ -n "$relay_url" ]; then start_daemon; else say "no --relay given: start the daemon later with install.sh --relay URL"; fi
}

main "$@"
