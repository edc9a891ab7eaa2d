#!/usr/bin/env bash
# Serve the embedded SmolLM2 GGUF with llama-cpp-python's OpenAI-compatible server on 127.0.0.1.
#   bash scripts/llama_server.sh [PORT]     (needs: bash scripts/install.sh test)
set -euo pipefail
port=${1:-8080}
gguf=$(python3 -c "from harness.models import embedded_gguf; print(embedded_gguf())")
exec python3 -m llama_cpp.server --model "$gguf" --host 127.0.0.1 --port "$port" --n_ctx 4096 \
    --model_alias smollm2-135m-instruct
