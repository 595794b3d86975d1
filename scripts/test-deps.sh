#!/usr/bin/env bash
# Make sure what the test suite talks to is here: Dovecot's and Postfix's binaries (the
# tests start private instances of each), headless Chromium with its driver (the HTML
# report's test), and the PostgreSQL server on 127.0.0.1:5432.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
if ! command -v dovecot >/dev/null 2>&1 || ! command -v doveadm >/dev/null 2>&1; then
  missing+=(dovecot-imapd)  # the IMAP tests start a private Dovecot
fi
if [ ! -x /usr/sbin/postfix ] || [ ! -x /usr/sbin/postmap ]; then
  missing+=(postfix)  # tests/test_postfix.py starts a private Postfix (postfix -c DIR)
  # Install the binaries only: no system configuration, no system Postfix started.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  missing+=(chromium chromium-driver)  # tests/test_report_browser.py opens the HTML report headless
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

pg_ready() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_ready; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "installing postgresql"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  echo "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
  pg_ready || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
fi
