#!/usr/bin/env bash
# The whole test suite from a fresh machine: install (pinned CPU torch first), then pytest and
# every notebook under nbval. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev,notebooks,kernels]"
# tests/test_site.py opens the rendered notebooks in headless Chromium (and fails without one): install
# Debian's chromium when no browser is on PATH and apt-get can (about 20 s; `apt-get update` only if needed)
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
   && ! command -v google-chrome >/dev/null && command -v apt-get >/dev/null; then
  sudo=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && sudo="sudo -n"
  apt_install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }
  apt_install || { $sudo apt-get update -qq >/dev/null 2>&1 && apt_install; } \
    || echo "could not install chromium with apt-get: tests/test_site.py will fail (see its message)" >&2
fi
start=$(date +%s)
python -m pytest tests notebooks --nbval-lax -p no:cacheprovider "$@"
echo "test suite: $(( $(date +%s) - start ))s"
