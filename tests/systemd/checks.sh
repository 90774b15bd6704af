# The checks tests/systemd/run makes inside the booted container. Sourced by
# it: `inside` runs a command in the container, `check NAME CMD…` counts a check.
# The container shares the host's network, so the host's curl reaches the
# relay on loopback.

relay_port=""
code=""

# Users for the console checks, and a release on a file server on loopback:
# good, with a tampered archive, and signed by another key.
setup() {
  inside useradd --create-home alice
  inside useradd --create-home bob
  cp packaging/install.sh "$root/root/install.sh"
  make_releases
  serve_releases
  relay_port=$(free_port)
}

make_releases() {
  local r=$work/releases
  mkdir -p "$r/good" "$r/tampered" "$r/badsig"
  ssh-keygen -q -t ed25519 -N '' -C aic-release -f "$work/release-key"
  ssh-keygen -q -t ed25519 -N '' -C other -f "$work/other-key"
  packaging/release.sh --out "$r/good" --bin-dir "$bin_dir" --sign-key "$work/release-key" >/dev/null
  cp "$r/good"/* "$r/tampered/"
  printf 'x' >>"$r/tampered/$(cd "$r/good" && ls ./*.tar.gz | cut -c3-)"
  cp "$r/good"/* "$r/badsig/"
  rm "$r/badsig/SHA256SUMS.sig"
  ssh-keygen -q -Y sign -f "$work/other-key" -n aic-release "$r/badsig/SHA256SUMS"
  pubkey=$(cat "$work/release-key.pub")
}

serve_releases() {
  python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$work/releases" >"$work/http.log" 2>&1 &
  http_server=$!
  until_ok 60 grep -q 'port [0-9]' "$work/http.log" || die "the release file server did not start"
  release_url="http://127.0.0.1:$(grep -oE 'port [0-9]+' "$work/http.log" | head -n 1 | cut -d' ' -f2)"
}

# A free loopback port below the kernel's ephemeral range. The relay binds it
# again at each of its (re)starts over the run; a port the kernel hands out
# could meanwhile go to another test's port-0 listener or outgoing connection.
free_port() {
  python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(100):
    port = random.randrange(10000, low) if low > 11000 else 0
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
PY
}

# Runs the installer in the container.
install_sh() { inside bash /root/install.sh "$@"; }

nothing_installed() { ! inside test -e /usr/local/bin/aic-daemon; }

# Whether the daemon's status line in systemd is exactly $1.
status_is() { [ "$(inside systemctl show -P StatusText aic-daemon)" = "$1" ]; }

refuses_a_tampered_archive() {
  local out
  out=$(install_sh --base-url "$release_url/tampered" --pubkey "$pubkey" --relay "ws://127.0.0.1:1" 2>&1) && return 1
  echo "$out" | grep -q 'does not match its SHA-256' || { say "  $out"; return 1; }
  nothing_installed
}

refuses_a_bad_signature() {
  local out
  out=$(install_sh --base-url "$release_url/badsig" --pubkey "$pubkey" --relay "ws://127.0.0.1:1" 2>&1) && return 1
  echo "$out" | grep -q 'not signed by the pinned release key' || { say "  $out"; return 1; }
  nothing_installed
}

installs_and_prints_the_code() {
  local out
  out=$(install_sh --base-url "$release_url/good" --pubkey "$pubkey" --with-relay \
    --relay-listen "127.0.0.1:$relay_port" --relay "ws://127.0.0.1:$relay_port" --mode auto 2>&1) \
    || { say "  $out"; return 1; }
  code=$(echo "$out" | grep -oE '^Session: AIC-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}$' | cut -d' ' -f2)
  [ -n "$code" ] || { say "  $out"; return 1; }
  inside test -s /usr/local/share/man/man1/aic-daemon.1 || { say "  no man page installed"; return 1; }
  # Type=notify: systemd hears from the daemon what its link is doing. The
  # status may follow the Session line (it is sent once the link is up), and
  # "not linked to the relay; retrying" must not pass for it.
  until_ok 120 status_is 'linked to the relay' \
    || { say "  status: $(inside systemctl show -P StatusText aic-daemon)"; return 1; }
  inside systemctl is-active --quiet aic-relay aic-daemon
}

uninstall_keeps_the_code() {
  install_sh --uninstall >/dev/null || return 1
  nothing_installed && inside test -s /var/lib/aic-daemon/state.json \
    && ! inside systemctl cat aic-daemon >/dev/null 2>&1
}

purge_removes_everything() {
  install_sh --uninstall --purge >/dev/null || return 1
  ! inside test -e /var/lib/aic-daemon && ! inside test -e /etc/aic-daemon && ! inside getent group aic >/dev/null
}

units_verify_clean() {
  local out
  out=$(inside systemd-analyze verify /etc/systemd/system/aic-relay.service /etc/systemd/system/aic-daemon.service 2>&1)
  [ -z "$out" ] || { say "$out"; return 1; }
}

relay_exposure_at_most_2() {
  local line score
  line=$(inside systemd-analyze security --offline=yes --no-pager aic-relay.service 2>&1 | grep 'Overall exposure')
  score=$(echo "$line" | grep -oE '[0-9]+\.[0-9]+' | head -n 1)
  say "  $line"
  awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }'
}

journal() { inside journalctl --no-pager -o cat -u "$1"; }

# The code the daemon printed last, after $1 "Session:" lines have appeared.
session_line() {
  local lines
  lines=$(journal aic-daemon | grep -E '^Session: AIC-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}$') || return 1
  [ "$(echo "$lines" | wc -l)" -ge "$1" ] || return 1
  echo "$lines" | tail -n 1 | cut -d' ' -f2
}

no_escape_codes_in_the_journal() {
  local unit
  for unit in aic-relay aic-daemon; do
    if journal "$unit" | grep -q $'\x1b'; then
      say "  the journal of $unit holds escape codes"
      return 1
    fi
  done
}

exec_runs_as_root() {
  local body
  body=$(curl -sS --max-time 20 -H 'Content-Type: application/json' \
    -d "{\"code\":\"$code\",\"command\":\"id -u\"}" "http://127.0.0.1:$relay_port/api/v1/exec")
  echo "$body" | grep -q '"stdout":"0\\n"' || { say "  $body"; return 1; }
}

console_works_for_group_aic() {
  inside usermod -aG aic alice && inside runuser -u alice -- aic-console status | grep -q "$code"
}

console_refuses_others() {
  local out
  if out=$(inside runuser -u bob -- aic-console status 2>&1); then
    say "  bob was let in: $out"
    return 1
  fi
  echo "$out" | grep -qi 'permission\|not allowed\|denied' || { say "  $out"; return 1; }
}

# A job started through the relay runs in a transient scope of its own, out of
# the daemon's service, so that restarting the service leaves it running.
job_id=""
a_job_runs_in_a_scope_of_its_own() {
  local body
  body=$(curl -sS --max-time 20 -H 'Content-Type: application/json' \
    -d "{\"code\":\"$code\",\"command\":\"echo begun; while [ ! -e /tmp/job.go ]; do sleep 0.1; done; echo finished\"}" \
    "http://127.0.0.1:$relay_port/api/v1/jobs")
  job_id=$(echo "$body" | grep -o '"jobId":"[^"]*"' | cut -d'"' -f4)
  [ -n "$job_id" ] || { say "  $body"; return 1; }
  until_ok 120 inside systemctl is-active --quiet "aic-job-${job_id//-/}.scope" \
    || { say "  no scope aic-job-${job_id//-/}.scope"; return 1; }
}

# After `systemctl restart aic-daemon` (restart_keeps_the_code) the job still
# runs, and the restarted daemon reports its end.
a_job_outlives_systemctl_restart() {
  local url="http://127.0.0.1:$relay_port/api/v1/jobs/$code/$job_id"
  [ -n "$job_id" ] || return 1
  curl -sS --max-time 20 "$url" | grep -q '"state":"running"' || { say "  $(curl -sS "$url")"; return 1; }
  inside touch /tmp/job.go
  until_ok 60 sh -c "curl -sS --max-time 5 '$url' | grep -q '\"state\":\"exited\"'" \
    || { say "  $(curl -sS "$url")"; return 1; }
  curl -sS --max-time 5 "$url" | grep -q '"exitCode":0' || return 1
  curl -sS --max-time 5 "$url/output" | grep -q '"text":"begun\\nfinished\\n"' \
    || { say "  $(curl -sS "$url/output")"; return 1; }
}

restart_keeps_the_code() {
  inside systemctl restart aic-daemon || return 1
  until_ok 60 session_line 2 >/dev/null || return 1
  [ "$(session_line 2)" = "$code" ]
}

restarts_after_a_crash() {
  inside systemctl kill --signal=KILL aic-daemon || return 1
  until_ok 60 session_line 3 >/dev/null || { inside systemctl status aic-daemon --no-pager >&2; return 1; }
  [ "$(session_line 3)" = "$code" ] && [ "$(inside systemctl show -P NRestarts aic-daemon)" = 1 ]
}

# A command that detaches itself (new session, parent gone) still cannot act
# as the operator: it stays under its reaper and in the daemon's cgroup.
a_detached_command_cannot_change_the_mode() {
  local body
  body=$(curl -sS --max-time 20 -H 'Content-Type: application/json' --data-binary @- \
    "http://127.0.0.1:$relay_port/api/v1/exec" <<JSON
{"code":"$code","command":"setsid -f sh -c 'while [ ! -e /tmp/guard.go ]; do sleep 0.05; done; aic-console mode disabled >/tmp/guard.out 2>&1; echo rc=\$? >>/tmp/guard.out' >/dev/null 2>&1"}
JSON
  )
  echo "$body" | grep -q '"exitCode":0' || { say "  $body"; return 1; }
  # It tries once its command has ended and answered.
  inside touch /tmp/guard.go
  until_ok 60 inside grep -qs 'rc=' /tmp/guard.out || { say "  the detached command never ran"; return 1; }
  inside grep -q 'rc=1' /tmp/guard.out && inside grep -q "refused: process" /tmp/guard.out \
    || { say "  $(inside cat /tmp/guard.out)"; return 1; }
  [ "$(inside aic-console mode)" = auto ]
}

# Delegate=yes: each command runs in a cgroup of its own under the service,
# and what it detached (new session, parent gone, deaf to SIGTERM) dies with
# it at its timeout; the command's cgroup is removed once empty.
a_detached_command_dies_at_the_timeout() {
  local body pid
  body=$(curl -sS --max-time 20 -H 'Content-Type: application/json' --data-binary @- \
    "http://127.0.0.1:$relay_port/api/v1/exec" <<JSON
{"code":"$code","timeout_ms":2000,"command":"grep '^0::' /proc/self/cgroup; (setsid sh -c 'trap \\"\\" TERM; exec sleep 301' >/dev/null 2>&1 & echo pid=\$!); sleep 100"}
JSON
  )
  echo "$body" | grep -q '"timedOut":true' || { say "  $body"; return 1; }
  echo "$body" | grep -qE '0::/system.slice/aic-daemon.service/cmd-[0-9a-f-]+' \
    || { say "  not in a cgroup of its own: $body"; return 1; }
  pid=$(echo "$body" | grep -oE 'pid=[0-9]+' | cut -d= -f2)
  [ -n "$pid" ] || { say "  $body"; return 1; }
  until_ok 120 inside sh -c "! test -e /proc/$pid || grep -q '^State:.*Z' /proc/$pid/status" \
    || { say "  sleep 301 outlived its command"; return 1; }
  until_ok 120 eval '[ -z "$(inside find /sys/fs/cgroup -maxdepth 5 -name "cmd-*" 2>/dev/null)" ]' \
    || { say "  the command's cgroup is still there"; return 1; }
}

# As many commands at once as the daemon allows by default (max_concurrent,
# 16; past it the daemon refuses, so more would test the refusal, and only
# when the machine is slow), each in a cgroup of its own: none may remove
# another's cgroup before its reaper has joined it (this answered 500 "No
# such device" once), and every cgroup is gone when they are.
parallel_commands_each_get_their_cgroup() {
  local dir i failed=0 pids=()
  dir=$(mktemp -d)
  for i in $(seq 16); do
    curl -sS --max-time 30 -H 'Content-Type: application/json' \
      -d "{\"code\":\"$code\",\"command\":\"echo run $i\"}" \
      -o "$dir/$i" "http://127.0.0.1:$relay_port/api/v1/exec" &
    pids+=($!)
  done
  wait "${pids[@]}"
  for i in $(seq 16); do
    grep -q "\"stdout\":\"run $i\\\\n\"" "$dir/$i" || { say "  command $i: $(cat "$dir/$i")"; failed=1; }
  done
  rm -rf "$dir"
  [ "$failed" = 0 ] || return 1
  until_ok 120 eval '[ -z "$(inside find /sys/fs/cgroup -maxdepth 5 -name "cmd-*" 2>/dev/null)" ]' \
    || { say "  command cgroups left behind"; return 1; }
}

# Type=notify must not make a boot wait on the relay: with the relay down the
# daemon is ready once it retries, and links when the relay is back.
boot_never_waits_on_the_relay() {
  inside systemctl stop aic-relay || return 1
  inside timeout 60 systemctl restart aic-daemon || return 1
  inside systemctl show -P StatusText aic-daemon | grep -q 'retrying' || return 1
  inside systemctl start aic-relay || return 1
  until_ok 120 session_line 4 >/dev/null || { journal aic-daemon | tail -n 5 >&2; return 1; }
  [ "$(session_line 4)" = "$code" ]
}

# The drop-in from packaging/: commands then run as aic-agent, and the code stays.
runs_as_a_dedicated_user() {
  local body
  inside useradd --system --create-home --home-dir /var/lib/aic-agent aic-agent || return 1
  mkdir -p "$root/etc/systemd/system/aic-daemon.service.d"
  inside cp /usr/local/share/aic/aic-daemon-user.conf /etc/systemd/system/aic-daemon.service.d/user.conf
  inside systemctl daemon-reload && inside systemctl restart aic-daemon || return 1
  until_ok 60 session_line 5 >/dev/null || { journal aic-daemon | tail -n 5 >&2; return 1; }
  [ "$(session_line 5)" = "$code" ] || return 1
  body=$(curl -sS --max-time 20 -H 'Content-Type: application/json' \
    -d "{\"code\":\"$code\",\"command\":\"id -un\"}" "http://127.0.0.1:$relay_port/api/v1/exec")
  echo "$body" | grep -q '"stdout":"aic-agent\\n"' || { say "  $body"; return 1; }
}

# The .deb, installed the Debian way on the purged machine.
deb_installs_and_runs() {
  [ -n "$deb" ] || { say "  no .deb given (tests/systemd/run --deb FILE)"; return 1; }
  cp "$deb" "$root/root/aic.deb"
  inside dpkg -i /root/aic.deb >/dev/null || return 1
  inside test -x /usr/bin/aic-daemon && inside getent group aic >/dev/null && inside getent passwd aic-relay >/dev/null \
    || return 1
  inside test -s /usr/share/man/man1/aic-daemon.1.gz && inside test -s /usr/share/bash-completion/completions/aic-relay \
    || { say "  no man page or completions in the package"; return 1; }
  ! inside systemctl is-active --quiet aic-daemon || { say "  the daemon started before it was configured"; return 1; }
  mkdir -p "$root/etc/systemd/system/aic-relay.service.d" "$root/etc/aic-daemon"
  printf '[Service]\nEnvironment=AIC_RELAY_LISTEN=127.0.0.1:%s\n' "$relay_port" \
    >"$root/etc/systemd/system/aic-relay.service.d/listen.conf"
  printf 'relay = "ws://127.0.0.1:%s"\nmode = "auto"\n' "$relay_port" >"$root/etc/aic-daemon/config.toml"
  inside systemctl daemon-reload && inside systemctl start aic-relay aic-daemon || return 1
  until_ok 60 session_line 6 >/dev/null || { journal aic-daemon | tail -n 5 >&2; return 1; }
  code=$(session_line 6)
  exec_runs_as_root
}

deb_purge_removes_everything() {
  inside dpkg --purge aic >/dev/null || return 1
  ! inside test -e /usr/bin/aic-daemon && ! inside test -e /var/lib/aic-daemon \
    && ! inside getent group aic >/dev/null && ! inside getent passwd aic-relay >/dev/null
}

run_checks() {
  setup
  check "install.sh refuses a tampered archive and installs nothing" refuses_a_tampered_archive
  check "install.sh refuses a signature by another key and installs nothing" refuses_a_bad_signature
  check "install.sh installs both services and prints the session code" installs_and_prints_the_code
  check "both units verify with no warning" units_verify_clean
  check "the relay unit's exposure is at most 2.0" relay_exposure_at_most_2
  check "no escape codes in either journal" no_escape_codes_in_the_journal
  check "a command sent to the relay runs on the machine as root" exec_runs_as_root
  check "aic-console status works for a member of group aic" console_works_for_group_aic
  check "aic-console status is refused to a user outside group aic" console_refuses_others
  check "a command that detaches itself cannot change the mode" a_detached_command_cannot_change_the_mode
  check "a command runs in a cgroup of its own; what it detached dies at its timeout" a_detached_command_dies_at_the_timeout
  check "16 commands at once (the default limit) each run in a cgroup of their own, all removed after" \
    parallel_commands_each_get_their_cgroup
  check "a job runs in a systemd scope of its own" a_job_runs_in_a_scope_of_its_own
  check "systemctl restart aic-daemon keeps the code" restart_keeps_the_code
  check "a job outlives systemctl restart aic-daemon and its end is reported" a_job_outlives_systemctl_restart
  check "kill -9 of the daemon: systemd restarts it, same code" restarts_after_a_crash
  check "with the relay down, systemctl restart aic-daemon returns and it links when the relay is back" \
    boot_never_waits_on_the_relay
  check "the dedicated-user drop-in: commands run as aic-agent, same code" runs_as_a_dedicated_user
  check "install.sh --uninstall removes aic and keeps the code" uninstall_keeps_the_code
  check "install.sh --uninstall --purge removes the code, config and group" purge_removes_everything
  check "dpkg -i aic.deb: users, group, man pages and completions; services run once configured" deb_installs_and_runs
  check "dpkg --purge aic removes the binaries, the code, the group and the user" deb_purge_removes_everything
}
