#!/usr/bin/env bash
# Install, then run the test suite. As root with `unshare`, the tests run in a private network
# namespace with only loopback up, so the Ray and S3 servers they start bind to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash infra/local/setup.sh
run_isolated() {
  if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && unshare --net true 2>/dev/null; then
    unshare --net sh -c 'ip link set lo up && exec "$@"' sh "$@"
  else
    "$@"
  fi
}
set +e
run_isolated .venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
