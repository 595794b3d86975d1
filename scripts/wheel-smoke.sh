#!/usr/bin/env bash
# The wheel as a user installs it: build it (sdist, then the wheel from the sdist, as
# PyPI users get it), install it into a fresh virtual environment with no extras, and
# run a helpdesk from it: init, ingest one message, show its ticket, deliver the
# acknowledgement.  It catches what the editable install of `make test` hides: files
# the wheel does not ship (the sample rules, the templates) and imports of packages
# that only an extra installs.  CI runs it after `make test` (`make wheel-smoke`).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV_PY=${VENV_PY:-.venv/bin/python}  # the project's environment: it runs `build`
PY=${PY:-python3}                     # makes the fresh environment, as the Makefile does
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "wheel-smoke: FAIL: $*" >&2; exit 1; }
step() { echo "wheel-smoke: $*"; }

step "building the sdist and the wheel"
"$VENV_PY" -m pip install --quiet build
"$VENV_PY" -m build --outdir "$tmp/dist" . >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; fail "build"; }
wheel=$(ls "$tmp"/dist/mailticket-*.whl)

step "installing $(basename "$wheel") into a fresh virtual environment"
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet "$wheel"
mt="$tmp/venv/bin/mailticket"
if "$tmp/venv/bin/python" -c "import psycopg2" 2>/dev/null; then
  fail "psycopg2 was installed without the [postgres] extra"
fi

hd="$tmp/helpdesk"
step "mailticket init $hd"
(cd "$tmp" && "$mt" init "$hd")  # from elsewhere: nothing may come from this checkout
diff -r rules "$hd/rules" || fail "init did not copy the sample rules (rules/) from the wheel"
"$mt" --config "$hd/mailticket.toml" rules check

cat >"$tmp/message.eml" <<'EOF'
From: Alice Customer <alice@customer.example>
To: support@example.com
Subject: Wheel smoke: the printer is on fire
Message-ID: <wheel-smoke-1@customer.example>
Date: Mon, 01 Jan 2024 10:00:00 +0000

Please help.
EOF
step "mailticket ingest --json message.eml"
out=$("$mt" --config "$hd/mailticket.toml" ingest --json "$tmp/message.eml")
echo "$out"
grep -q '"outcome": "created"' <<<"$out" || fail "ingest did not create a ticket"

step "mailticket ticket show 1 --json"
out=$("$mt" --config "$hd/mailticket.toml" ticket show 1 --json)
grep -q '"subject": "Wheel smoke: the printer is on fire"' <<<"$out" || { echo "$out"; fail "ticket 1"; }

step "mailticket outbox deliver"
"$mt" --config "$hd/mailticket.toml" outbox deliver
ack=$(grep -l '^To: .*alice@customer.example' "$hd"/var/outgoing/*.eml 2>/dev/null | head -n1) || true
[ -n "$ack" ] || fail "no acknowledgement in $hd/var/outgoing"
grep -q '\[#1\]' "$ack" || fail "the acknowledgement $ack does not name ticket [#1]"

step "a postgresql:// url without the extra names it"
sed 's#^url = "sqlite:///var/mailticket.db"#url = "postgresql://mailticket@127.0.0.1/mailticket"#' \
  "$hd/mailticket.toml" >"$hd/pg.toml"
if out=$("$mt" --config "$hd/pg.toml" ticket list 2>&1); then fail "ticket list worked without a driver"; fi
grep -qF "pip install 'mailticket[postgres]'" <<<"$out" || { echo "$out"; fail "no hint at the extra"; }

step "ok"
