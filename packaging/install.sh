#!/usr/bin/env bash
# Installs the aic binaries from this checkout and, with --daemon RELAY_URL,
# sets up and starts the aic-daemon service. Run as root.
#
#   sudo packaging/install.sh                                  # binaries only
#   sudo packaging/install.sh --daemon wss://relay.example.com # and the daemon service
#   sudo packaging/install.sh --relay                          # and the relay service
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo $0 $*)" >&2; exit 1; }

relay_url="" relay=false
while [ $# -gt 0 ]; do
  case "$1" in
    --daemon) relay_url=${2:?--daemon needs the relay URL}; shift 2 ;;
    --relay) relay=true; shift ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

cargo build --release --bins
install -m 0755 target/release/aic-relay target/release/aic-daemon target/release/aic-console /usr/local/bin/
getent group aic >/dev/null || groupadd --system aic
echo "Installed aic-relay, aic-daemon and aic-console in /usr/local/bin."

if [ -n "$relay_url" ]; then
  install -d -m 0755 /etc/aic-daemon
  [ -f /etc/aic-daemon/config.toml ] || printf 'relay = "%s"\n' "$relay_url" > /etc/aic-daemon/config.toml
  install -m 0644 packaging/aic-daemon.service /etc/systemd/system/
  systemctl daemon-reload
  systemctl enable --now aic-daemon
  echo "aic-daemon started; its code: journalctl -u aic-daemon | grep Session:  (or: aic-console code)"
  echo "Let an operator in without sudo: usermod -aG aic USER (then log in again)."
fi
if $relay; then
  getent passwd aic-relay >/dev/null || useradd --system --home-dir /var/lib/aic-relay --shell /usr/sbin/nologin aic-relay
  install -m 0644 packaging/aic-relay.service /etc/systemd/system/
  systemctl daemon-reload
  systemctl enable --now aic-relay
  echo "aic-relay started on 127.0.0.1:8080; edit /etc/systemd/system/aic-relay.service for its public URL."
  echo "Manage accounts as its user: sudo -u aic-relay aic-relay --data-dir /var/lib/aic-relay account add EMAIL"
fi
