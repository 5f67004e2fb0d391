#!/usr/bin/env bash
# Install what the tests need (Debian packages and Python packages) and run them.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in postfix:postfix swaks:swaks opendkim-testmsg:opendkim-tools nsd:nsd rspamd:rspamd pebble:pebble; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
command -v openssl >/dev/null 2>&1 || need+=(openssl)     # TLS settings tests: openssl s_client
perl -MNet::SSLeay -e1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl)     # swaks --tls
for pair in unbound:unbound ldns-signzone:ldnsutils; do command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}"); done   # DANE: validating resolver, zone signing
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

python3 -m pip install -q -e '.[test]'
# Exim conflicts with Postfix: its packages are downloaded and unpacked into a cache, never installed
# (tests/support/peers/exim.py; quick once cached). Without them the Exim tests skip and say why.
python3 -m tests.support.peers.exim >/dev/null || true
# Lint and import order (ruff), types of the service and access layers (mypy): pyproject.toml says which.
python3 -m ruff check --quiet .
python3 -m mypy
python3 -m pytest -q -p no:cacheprovider "$@"
