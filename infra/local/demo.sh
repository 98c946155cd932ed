#!/usr/bin/env bash
# One command from a fresh clone: install, then synthesise rainy clips and de-rain them.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash infra/local/setup.sh
exec .venv/bin/derain demo "$@"
