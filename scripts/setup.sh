#!/usr/bin/env bash
# Set up a development/test environment on a Debian host: system tools used by the
# tests (real TLS peers, Prometheus, systemd helpers) and a virtualenv in .venv.
# Usage: bash scripts/setup.sh [--runtime-only]
set -euo pipefail
cd "$(dirname "$0")/.."

runtime_only=0
[ "${1:-}" = "--runtime-only" ] && runtime_only=1

apt_packages="python3 python3-venv python3-pip ca-certificates"
if [ "$runtime_only" = 0 ]; then
  apt_packages="$apt_packages openssl gnutls-bin curl prometheus systemd procps psmisc hitch wrk testssl.sh"
fi

missing=""
for p in $apt_packages; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing Debian packages:$missing" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extra=".[test]"
[ "$runtime_only" = 1 ] && extra="."
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
# pip's warnings about unused index locations are noise here; its errors still stop the script.
if ! .venv/bin/pip install -q -e "$extra" >.venv/pip-install.log 2>&1; then
  cat .venv/pip-install.log >&2
  exit 1
fi
