#!/usr/bin/env bash
# The whole test suite from a fresh machine: install (pinned CPU torch first), then pytest and
# every notebook under nbval. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev,notebooks,kernels]"
start=$(date +%s)
python -m pytest tests notebooks --nbval-lax -p no:cacheprovider "$@"
echo "test suite: $(( $(date +%s) - start ))s"
