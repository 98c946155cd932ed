# Sourced by the local scripts. run_isolated CMD...: as root with a working `unshare`, run CMD in
# a private network namespace with only loopback up, so the Ray and S3 servers it starts bind to
# 127.0.0.1 (Ray otherwise binds to the machine's routable address). Elsewhere, run CMD as is.
run_isolated() {
  if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null \
      && unshare --net true 2>/dev/null; then
    unshare --net sh -c 'ip link set lo up && exec "$@"' sh "$@"
  else
    "$@"
  fi
}
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
