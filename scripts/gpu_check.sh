#!/usr/bin/env bash
# The real path checked and measured on a GPU: the paper and colab profiles' stages and chapters 2-3 on stand-in data
# in the real formats at 224 px, with random weights of RN50 and ViT-B-32; throughput and peak GPU memory appended to
# benchmarks/results/gpu_check.csv. Under 8 minutes on one GPU. `--tiny` runs it on a CPU in under a minute.
# Options: scripts/gpu_check.py --help. The Python: $PYTHON, else the book's .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export TQDM_DISABLE=1 PYDEVD_DISABLE_FILE_VALIDATION=1
exec "$PY" scripts/gpu_check.py "$@"
