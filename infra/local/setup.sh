#!/usr/bin/env bash
# Create .venv (if missing) and install derain-archive with its data and test extras.
# torch goes in first, pinned, so pip takes the CPU build on disk instead of a multi-GB CUDA one.
# A stamp of the dependency files skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.derain-installed
want=$(cat pyproject.toml infra/constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
log=$(mktemp)
echo "installing into .venv (first time: a few minutes) ..." >&2
if ! {
  .venv/bin/python -m pip install --upgrade pip &&
  .venv/bin/python -m pip install "torch==${TORCH_VERSION:-2.13.0}" &&
  .venv/bin/python -m pip install -c infra/constraints.txt -e ".[data,test]"
} >"$log" 2>&1; then
  grep -v '^WARNING: Location' "$log" | tail -n 40 >&2
  echo "setup failed; full log: $log" >&2
  exit 1
fi
echo "$want" > "$stamp"
rm -f "$log"
