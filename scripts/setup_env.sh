#!/usr/bin/env bash
# Create or refresh .venv idempotently. Usage: scripts/setup_env.sh [--test]
# --test also installs the system tools the test suite drives (scripts/test-tools.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--test" ]; then
  need=()
  while read -r cmd pkg; do
    case "$cmd" in ""|\#*) continue ;; esac
    command -v "$cmd" >/dev/null || need+=("$pkg")
  done < scripts/test-tools.txt
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "setup: please install ${need[*]} (apt-get install ${need[*]})" >&2; exit 1
    fi
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.setup-stamp
want=$(cat requirements.txt scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
[ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && exit 0

pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing CUDA torch"
    pip install "torch>=2.11,<2.12"  # the range the CUDA kernels are tested on (docs/BENCHMARKS.md)
  elif ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-*+cpu-*.whl >/dev/null 2>&1; then
    echo "setup: installing the local CPU build of torch"
    pip install "torch==2.13.0"
  else
    echo "setup: no GPU, installing the CPU build of torch"
    pip install "torch>=2.5" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
echo "setup: installing requirements"
pip install -r requirements.txt
# CUDA torch brings its own Triton; elsewhere the fused kernels are tested through Triton's interpreter.
.venv/bin/python -c "import triton" 2>/dev/null || pip install "triton==3.9.0"
echo "$want" > "$stamp"
