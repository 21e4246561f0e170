#!/usr/bin/env bash
# The main job on the built-in tiny world, from a fresh machine: install (pinned CPU torch
# first), then run the pipeline and print what it trained and how well.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev,notebooks,kernels]"
python -m minirlhf baselines "$@"
