#!/usr/bin/env bash
# Run on a machine with a GPU (the `device` tool): installs cupy, checks cupy vs numpy agreement on
# every zoo model (float64, <= 1e-9 relative) and times forward/explain; then the benchmark on CuPy.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -e ".[gpu]" || python -m pip install --quiet -e . cupy-cuda12x
python tools/gpu_check.py --out "${OUT:-.}/gpu_check.json"
