#!/usr/bin/env bash
# Installs the Debian package on this machine (root) and checks it: files,
# owners and modes, the service user, `mailbridge --version`, `check` naming
# the missing password, the unit verified, the daemon running as the service
# user on the packaged paths, a reinstall keeping the edited config; then
# `dpkg --remove` (config and spool kept) and `dpkg --purge` (nothing left).
# Usage: packaging/test-deb.sh FILE.deb
# Leaves the machine as it found it: the package is purged on any exit.
set -euo pipefail

deb=${1:?usage: $0 FILE.deb}
[ "$(id -u)" = 0 ] || { echo "$0: needs root (dpkg -i)" >&2; exit 1; }
version=$(dpkg-deb -f "$deb" Version)

fail() { echo "test-deb: FAILED: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
# expect PATH MODE OWNER:GROUP [f|d]
expect() {
  local path=$1 mode=$2 owner=$3 kind=${4:-f}
  [ "$kind" = d ] && { [ -d "$path" ] || fail "$path is not a directory"; }
  [ "$kind" = f ] && { [ -f "$path" ] || fail "$path is not a file"; }
  local got
  got=$(stat -c '%a %U:%G' "$path")
  [ "$got" = "$mode $owner" ] || fail "$path is $got, want $mode $owner"
  ok "$path $got"
}
purge() { dpkg --purge mailbridge >/dev/null 2>&1 || true; }

# A run that failed half-way left the package behind: start clean.
if dpkg-query -W -f='${Status}' mailbridge 2>/dev/null | grep -q 'ok'; then purge; fi
for leftover in /etc/mailbridge /var/lib/mailbridge; do
  [ ! -e "$leftover" ] || fail "$leftover exists before the install (not from this package?)"
done
! getent passwd mailbridge >/dev/null || fail "a mailbridge user exists before the install"
trap purge EXIT

echo "--- dpkg -i $deb"
dpkg -i "$deb"
dpkg-query -W -f='${Status}\n' mailbridge | grep -qx 'install ok installed' || fail "not installed"

echo "--- service user"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd mailbridge) || fail "no mailbridge user"
[ "$uid" -lt 1000 ] || fail "mailbridge uid $uid is not a system uid"
[ "$(getent group mailbridge | cut -d: -f3)" = "$gid" ] || fail "mailbridge's primary group is not mailbridge"
[ "$home" = /var/lib/mailbridge ] || fail "home is $home"
[ "$shell" = /usr/sbin/nologin ] || fail "shell is $shell"
ok "mailbridge uid $uid gid $gid home $home shell $shell"

echo "--- files, owners, modes"
unit=/usr/lib/systemd/system/mailbridge.service
expect /usr/bin/mailbridge 755 root:root
expect "$unit" 644 root:root
expect /etc/mailbridge 750 root:mailbridge d
expect /etc/mailbridge/relay.toml 640 root:mailbridge
expect /var/lib/mailbridge 750 mailbridge:mailbridge d
expect /var/lib/mailbridge/spool 700 mailbridge:mailbridge d
expect /usr/share/man/man8/mailbridge.8.gz 644 root:root
expect /usr/share/man/man8/mailbridge-queue-list.8.gz 644 root:root
expect /usr/share/bash-completion/completions/mailbridge 644 root:root
expect /usr/share/zsh/vendor-completions/_mailbridge 644 root:root
expect /usr/share/fish/vendor_completions.d/mailbridge.fish 644 root:root
dpkg-query -W -f='${Conffiles}\n' mailbridge | grep -q '^ /etc/mailbridge/relay.toml ' \
  || fail "relay.toml is not a conffile"
ok "relay.toml is a conffile"
grep -qx 'spool_dir = "/var/lib/mailbridge/spool"' /etc/mailbridge/relay.toml || fail "packaged spool_dir"
grep -qx 'ExecStart=/usr/bin/mailbridge --config /etc/mailbridge/relay.toml run' "$unit" || fail "ExecStart"
grep -qx 'User=mailbridge' "$unit" && grep -qx 'StateDirectory=mailbridge' "$unit" || fail "User/StateDirectory"
zcat /usr/share/man/man8/mailbridge.8.gz | grep -q '^\.TH mailbridge 8' || fail "man page header"
zcat /usr/share/man/man8/mailbridge.8.gz | grep -q 'hash\\-password' || fail "man page lacks the commands"
ok "man page mailbridge(8)"
bash -c 'source /usr/share/bash-completion/completions/mailbridge && complete -p mailbridge' >/dev/null \
  || fail "bash completion does not load"
ok "bash completion loads"

echo "--- mailbridge --version"
out=$(mailbridge --version)
[ "$out" = "mailbridge ${version%-*}" ] || fail "--version says '$out', package is $version"
ok "$out"

echo "--- mailbridge -c /etc/mailbridge/relay.toml check (no password yet)"
for who in root mailbridge; do
  set +e
  out=$(runuser -u "$who" -- mailbridge -c /etc/mailbridge/relay.toml check 2>&1)
  rc=$?
  set -e
  echo "$out" | sed 's/^/  | /'
  [ "$rc" -ne 0 ] || fail "check as $who exited 0 without a password"
  grep -q 'password: FAILED: .*`password` key' <<<"$out" || fail "check as $who does not name the password key"
  # 0640 root:mailbridge is the intended mode: no advice to chmod 600 (which
  # would lock the service out of its own configuration).
  ! grep -q 'can be read by other users' <<<"$out" || fail "check warns about the packaged mode"
  ok "check as $who: exit $rc, names the password key"
done

echo "--- systemd-analyze verify $unit"
out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; fail "systemd-analyze verify"; }
[ -z "$out" ] || { echo "$out"; fail "systemd-analyze verify warned"; }
ok "unit verifies"

echo "--- the daemon as the service user on the packaged paths"
# What the unit does, without systemd (CI has no systemd as PID 1): the
# admin fills in a password; mailbridge runs as mailbridge in
# /var/lib/mailbridge, reads the 0640 config through its group and writes
# the spool. Listen ports are moved to port 0 (other tests share the machine)
# and the upstream to a closed local port (the message stays deferred).
sed -i -e 's/^password = "abcd efgh ijkl mnop"$/password = "packagetestpasswd"/' \
  -e 's/^listen = \["127.0.0.1:2525"\]$/listen = ["127.0.0.1:0"]/' \
  -e 's/^listen = \["127.0.0.1:1143"\]$/listen = ["127.0.0.1:0"]/' \
  -e 's/^listen = "127.0.0.1:9925"$/listen = "127.0.0.1:0"/' \
  -e 's/^# smtp = { host = "smtp.gmail.com".*$/smtp = { host = "127.0.0.1", port = 9, tls = "implicit" }/' \
  /etc/mailbridge/relay.toml
expect /etc/mailbridge/relay.toml 640 root:mailbridge
log=$(mktemp)
# setpriv execs the daemon itself (runuser would sit in between and turn
# SIGTERM into its own failure).
(cd /var/lib/mailbridge && exec setpriv --reuid mailbridge --regid mailbridge --init-groups \
  mailbridge -c /etc/mailbridge/relay.toml run) >"$log" 2>&1 &
daemon=$!
smtp=""
for _ in $(seq 100); do
  smtp=$(grep -oE 'SMTP listening on 127\.0\.0\.1:[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  [ -n "$smtp" ] && break
  kill -0 "$daemon" 2>/dev/null || break
  sleep 0.1 # polling a log file for the bound port; no other signal exists
done
[ -n "$smtp" ] || { cat "$log"; fail "daemon did not start as mailbridge"; }
python3 - "$smtp" <<'EOF'
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as s:
    s.sendmail("printer@example.com", ["someone@example.com"],
               b"Subject: package test\r\n\r\nspooled by the packaged daemon\r\n")
EOF
# The status page the package enables (127.0.0.1:9925, here moved to port 0)
# shows the accepted message.
status_port=$(grep -oE 'metrics listening on http://127\.0\.0\.1:[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
[ -n "$status_port" ] || { cat "$log"; fail "the packaged config does not start the status page"; }
page=$(curl -fsS --max-time 10 "http://127.0.0.1:$status_port/") || fail "status page did not answer"
grep -q 'someone@example.com' <<<"$page" || fail "status page does not show the accepted message"
ok "status page on the packaged config shows the accepted message"
kill -TERM "$daemon"
wait "$daemon" || { cat "$log"; fail "daemon exit status"; }
spooled=$(find /var/lib/mailbridge/spool -type f | wc -l)
[ "$spooled" -gt 0 ] || { cat "$log"; fail "nothing in the spool"; }
bad=$(find /var/lib/mailbridge/spool ! -user mailbridge | head -n 1)
[ -z "$bad" ] || fail "$bad in the spool is not owned by mailbridge"
ok "message accepted and spooled by mailbridge ($spooled files, all owned by mailbridge)"
if grep -q 'packagetestpasswd' "$log"; then fail "the password reached the log"; fi
if grep -q 'can be read by other users' "$log"; then cat "$log"; fail "the daemon warns about the packaged mode"; fi
rm -f "$log"

echo "--- dpkg -i again (reinstall/upgrade): edits, spool, owners and modes kept"
dpkg -i "$deb" >/dev/null
grep -q packagetestpasswd /etc/mailbridge/relay.toml || fail "reinstall replaced the edited relay.toml"
expect /etc/mailbridge/relay.toml 640 root:mailbridge
expect /var/lib/mailbridge/spool 700 mailbridge:mailbridge d
[ "$(find /var/lib/mailbridge/spool -type f | wc -l)" = "$spooled" ] || fail "spool changed on reinstall"
ok "reinstall kept the edited relay.toml and the spool"

echo "--- dpkg --remove: binary gone, config and spool kept"
dpkg --remove mailbridge
[ ! -e /usr/bin/mailbridge ] || fail "/usr/bin/mailbridge left after remove"
[ ! -e "$unit" ] || fail "$unit left after remove"
grep -q packagetestpasswd /etc/mailbridge/relay.toml || fail "the edited relay.toml is gone after remove"
[ "$(find /var/lib/mailbridge/spool -type f | wc -l)" = "$spooled" ] || fail "spool changed on remove"
getent passwd mailbridge >/dev/null || fail "user gone after remove"
ok "remove kept /etc/mailbridge/relay.toml, the spool and the user"

echo "--- dpkg --purge: nothing left"
dpkg --purge mailbridge
trap - EXIT
! dpkg-query -W -f='${Status}' mailbridge 2>/dev/null | grep -q 'ok installed' || fail "still installed"
for gone in /etc/mailbridge /var/lib/mailbridge /usr/bin/mailbridge "$unit" \
  /usr/share/man/man8/mailbridge.8.gz /usr/share/bash-completion/completions/mailbridge \
  /usr/share/zsh/vendor-completions/_mailbridge /usr/share/fish/vendor_completions.d/mailbridge.fish \
  /usr/share/doc/mailbridge; do
  [ ! -e "$gone" ] || fail "$gone left after purge"
done
! getent passwd mailbridge >/dev/null || fail "user mailbridge left after purge"
! getent group mailbridge >/dev/null || fail "group mailbridge left after purge"
ok "purge removed the package, /etc/mailbridge, /var/lib/mailbridge, the user and the group"
echo "test-deb: all checks passed"
