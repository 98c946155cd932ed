#!/usr/bin/env bash
# One command from a fresh clone: install, synthesise rainy clips, de-rain them on a local Ray.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash infra/local/setup.sh
. infra/local/isolate.sh
run_isolated .venv/bin/derain demo "$@"
