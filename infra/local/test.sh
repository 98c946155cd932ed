#!/usr/bin/env bash
# Install, then run the test suite (arguments go to pytest) with loopback-only networking.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash infra/local/setup.sh
. infra/local/isolate.sh
set +e
run_isolated .venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
