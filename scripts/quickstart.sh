#!/usr/bin/env bash
# Install tls13-proxy into .venv and start it on the embedded default:
# https://localhost:8443/ with a generated self-signed certificate, in front of the demo backend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --runtime-only
exec .venv/bin/tls13-proxy "$@"
