#!/usr/bin/env bash
# Creates .venv and installs bitplan into it. Torch goes first, pinned to the CPU wheel, so the
# project's own torch range is already satisfied and pip never pulls the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".${extras:+[$extras]}"
