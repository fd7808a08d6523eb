#!/usr/bin/env bash
# Installs the peers and tools the benchmarks use (Debian 12, run as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for p in postfix stunnel4 dovecot-core dovecot-imapd dovecot-pop3d openssl procps python3 libsasl2-modules; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  # postfix asks debconf questions; answer "No configuration" (we run private instances).
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v smtp-source >/dev/null || { echo "smtp-source missing" >&2; exit 1; }
# System instances are never used; make sure none runs (policy-rc.d normally blocks them).
echo "setup ok"
