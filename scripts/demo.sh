#!/usr/bin/env bash
# Quick start 1: install, then run the service on embedded defaults with the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/bitplan demo "$@"
