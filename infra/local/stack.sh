#!/usr/bin/env bash
# One-command local stack: an S3-compatible endpoint (moto), a Prefect server, a process worker
# for the `derain-local` work pool, and a Ray head with dashboard / Jobs API, all on 127.0.0.1.
#
#   bash infra/local/stack.sh start      # start what is not running, wait until healthy
#   . .local-stack/env                   # PREFECT_API_URL, AWS_*, RAY_ADDRESS, Ray auth token
#   bash infra/local/stack.sh status     # asks each service; exit 0 only if all of them answer
#   bash infra/local/stack.sh stop       # stop each process by PID (idempotent)
#
# State, PID files and logs live in ONE folder: .local-stack/ (DERAIN_STACK_DIR), which holds
# PREFECT_HOME and the Ray auth token (token auth is on in Ray 2.60; the token is generated here,
# so nothing is written to ~/.ray). Ray's temp dir is NOT in it: Ray puts Unix sockets there, and
# a socket path may not exceed 107 bytes, so a checkout at a long path would break Ray. It is
# /tmp/derain-ray-HASH instead (DERAIN_RAY_TEMP), HASH unique per stack folder. A Ray that fails
# to start is stopped again, with the errors of its session logs. Ports: DERAIN_S3_PORT (9000),
# DERAIN_PREFECT_PORT (4200), DERAIN_RAY_PORT (6379), DERAIN_RAY_DASHBOARD_PORT (8265),
# DERAIN_RAY_CLIENT_PORT (10001). start waits up to DERAIN_STACK_WAIT_S (180) s per service.
# The S3 keys in the env file are moto's dummy test values.
#
# On a laptop run it directly. On the shared build machines Ray binds to the routable address
# unless only loopback exists, so run the stack AND everything that uses it inside ONE network
# namespace shell (the servers are unreachable from outside it, and they die with it):
#   unshare --net bash -c 'ip link set lo up && bash infra/local/stack.sh start && . .local-stack/env && ... ; bash infra/local/stack.sh stop'
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
STACK=${DERAIN_STACK_DIR:-$ROOT/.local-stack}
BIN=${DERAIN_VENV:-$ROOT/.venv}/bin
S3_PORT=${DERAIN_S3_PORT:-9000}
PREFECT_PORT=${DERAIN_PREFECT_PORT:-4200}
RAY_PORT=${DERAIN_RAY_PORT:-6379}
RAY_DASHBOARD_PORT=${DERAIN_RAY_DASHBOARD_PORT:-8265}
RAY_CLIENT_PORT=${DERAIN_RAY_CLIENT_PORT:-10001}
POOL=derain-local
# How long start waits for each service to answer (a busy machine needs minutes).
WAIT_S=${DERAIN_STACK_WAIT_S:-180}
BUCKET=${DERAIN_BUCKET:-derain-archive}
LOGS=$STACK/logs
PIDS=$STACK/pids
STACK_HASH=$(printf %s "$STACK" | sha256sum | cut -c1-10)
RAY_TEMP=${DERAIN_RAY_TEMP:-/tmp/derain-ray-$STACK_HASH}
RAY_MARKER="DERAIN_RAY_TAG=$RAY_TEMP"
TOKEN=$STACK/ray-auth-token
ENV_FILE=$STACK/env

log() { echo "stack: $*" >&2; }
die() { log "$*"; exit 1; }

write_env() {
  cat > "$ENV_FILE" <<EOF
# Written by infra/local/stack.sh; source it: . $ENV_FILE
export PREFECT_HOME=$STACK/prefect
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export RAY_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$RAY_DASHBOARD_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$TOKEN
export RAY_USAGE_STATS_ENABLED=0
# Ray's temp dir (sockets, session logs): $RAY_TEMP
# Where the flows read and write: \`start\` copies these local defaults (the bucket $BUCKET of
# the local S3 endpoint) into the Prefect Variables derain_source, derain_destination,
# derain_models, derain_content, derain_checkpoints unless those exist; runs read the Variables
# (\`prefect variable set derain_source ... --overwrite\` changes the next run), these as fallback.
export DERAIN_SOURCE=${DERAIN_SOURCE:-s3://$BUCKET/raw}
export DERAIN_DESTINATION=${DERAIN_DESTINATION:-s3://$BUCKET/derained}
export DERAIN_MODELS=${DERAIN_MODELS:-s3://$BUCKET/models}
export DERAIN_CONTENT=${DERAIN_CONTENT:-s3://$BUCKET/content}
export DERAIN_CHECKPOINTS=${DERAIN_CHECKPOINTS:-$STACK/train}
EOF
}

set_variables() {  # the flows' locations as Prefect Variables; existing ones are left alone
  local pair name value
  for pair in derain_source=$DERAIN_SOURCE derain_destination=$DERAIN_DESTINATION \
    derain_models=$DERAIN_MODELS derain_content=$DERAIN_CONTENT \
    derain_checkpoints=$DERAIN_CHECKPOINTS; do
    name=${pair%%=*} value=${pair#*=}
    if "$BIN/prefect" variable get "$name" > /dev/null 2>&1; then
      log "prefect variable $name kept: $("$BIN/prefect" variable get "$name" 2>/dev/null)"
    else
      "$BIN/prefect" variable set "$name" "$value" > "$LOGS/variables.log" 2>&1 ||
        die "could not set the Prefect Variable $name; log: $LOGS/variables.log"
    fi
  done
}

alive() {  # alive NAME: the PID in pids/NAME runs
  local pid
  pid=$(cat "$PIDS/$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != Z ]
}

start_bg() {  # start_bg NAME CMD...: in its own session (so stop can signal the group)
  local name=$1
  shift
  setsid "$@" > "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name"
}

wait_for() {  # wait_for NAME SECONDS CHECK...: poll CHECK until it succeeds
  local name=$1 seconds=$2 i
  shift 2
  for ((i = 0; i < seconds * 2; i++)); do
    if "$@" > /dev/null 2>&1; then
      return 0
    fi
    if [ "$name" != ray ] && ! alive "$name"; then
      tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name exited during start-up; log: $LOGS/$name.log"
    fi
    sleep 0.5
  done
  tail -n 20 "$LOGS/$name.log" >&2 || true
  die "$name not healthy after ${seconds}s; log: $LOGS/$name.log"
}

port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

s3_ok() {
  [ "$(curl -s -m 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/")" = 200 ]
}
prefect_ok() { [ "$(curl -sf -m 10 "http://127.0.0.1:$PREFECT_PORT/api/health")" = true ]; }
# Ray counts as up only when its GCS reports a live node (`ray status` exits 0 with "No cluster
# status" while the cluster is half up) and its Jobs API lists jobs with the auth token.
# Outputs are captured before grep: with pipefail, `cmd | grep -q` fails at random when grep
# exits at its first match and the writer dies of SIGPIPE.
ray_ok() {  # `ray status` retries a dead GCS for minutes: bounded here
  local out
  out=$(. "$ENV_FILE" && timeout 60 "$BIN/ray" status --address "127.0.0.1:$RAY_PORT" 2>&1) || return 1
  grep -q '^Active:' <<< "$out"
}
jobs_api_ok() {
  curl -sf -m 10 -H "Authorization: Bearer $(cat "$TOKEN" 2>/dev/null)" \
    "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/jobs/" > /dev/null
}
worker_ok() {  # the pool has a worker that the server sees as ONLINE
  local out
  out=$(curl -sf -m 10 -X POST -H 'Content-Type: application/json' -d '{}' \
    "http://127.0.0.1:$PREFECT_PORT/api/work_pools/$POOL/workers/filter") || return 1
  grep -q '"ONLINE"' <<< "$out"
}
ray_pids() { "$BIN/python" infra/local/procs.py find "$RAY_MARKER"; }

ray_errors() {  # the lines of Ray's session logs that say why it failed (last few)
  grep -h -E 'Error|error:|exceed|Traceback|failed' \
    "$RAY_TEMP"/session_latest/logs/*.log "$RAY_TEMP"/session_latest/logs/*.err 2>/dev/null |
    grep -v -E '^\s*$|DeprecationWarning|FutureWarning' | awk '!seen[$0]++' | tail -n 5 || true
}

ray_abort() {  # ray_abort WHY: stop what this start left running of Ray, say why, exit 1
  local errors
  errors=$(ray_errors || true)
  "$BIN/python" infra/local/procs.py kill "$RAY_MARKER" --timeout 10 > /dev/null 2>&1 || true
  tail -n 5 "$LOGS/ray.log" >&2 || true
  [ -z "$errors" ] || printf 'stack: from the Ray session logs:\n%s\n' "$errors" >&2
  die "$1; stopped its processes; logs: $LOGS/ray.log, $RAY_TEMP/session_latest/logs"
}

ray_wait() {  # ray_wait SECONDS CHECK: poll CHECK; false if Ray's processes die or time runs out
  local i
  for ((i = 0; i < $1 * 2; i++)); do
    "$2" > /dev/null 2>&1 && return 0
    [ -n "$(ray_pids)" ] || return 1
    sleep 0.5
  done
  return 1
}

start_ray() {
  if [ -n "$(ray_pids)" ]; then
    if ray_ok && jobs_api_ok; then
      log "ray already running (pids $(ray_pids | tr '\n' ' '))"
      return 0
    fi
    log "ray processes found but Ray is not healthy: stopping them and starting again"
    "$BIN/python" infra/local/procs.py kill "$RAY_MARKER" --timeout 15 > /dev/null ||
      die "ray processes survived SIGKILL: $(ray_pids)"
  fi
  port_free "$RAY_PORT" || die "port $RAY_PORT is taken (set DERAIN_RAY_PORT)"
  port_free "$RAY_DASHBOARD_PORT" || die "port $RAY_DASHBOARD_PORT is taken"
  mkdir -p "$RAY_TEMP"
  env "$RAY_MARKER" "$BIN/ray" start --head --node-ip-address 127.0.0.1 \
    --port "$RAY_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$RAY_DASHBOARD_PORT" \
    --include-dashboard true --ray-client-server-port "$RAY_CLIENT_PORT" \
    --temp-dir "$RAY_TEMP" --num-cpus "${DERAIN_RAY_CPUS:-$(nproc)}" \
    --disable-usage-stats > "$LOGS/ray.log" 2>&1 || ray_abort "ray start failed"
  ray_wait "$WAIT_S" ray_ok || ray_abort "ray's GCS reports no live node after ${WAIT_S}s"
  ray_wait "$WAIT_S" jobs_api_ok || ray_abort "ray's Jobs API does not answer after ${WAIT_S}s"
  ray_pids > "$PIDS/ray"
  log "ray head on $RAY_ADDRESS, jobs API $RAY_API_SERVER_ADDRESS, pids $(tr '\n' ' ' < "$PIDS/ray")"
}

start() {
  [ -x "$BIN/python" ] || die "no virtual environment at ${BIN%/bin}: run bash infra/local/setup.sh"
  mkdir -p "$LOGS" "$PIDS" "$STACK/prefect"
  if [ ! -s "$TOKEN" ]; then
    (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_hex(32))' > "$TOKEN")
  fi
  write_env
  # shellcheck disable=SC1090
  . "$ENV_FILE"

  if alive s3; then
    log "s3 already running (pid $(cat "$PIDS/s3"))"
  else
    port_free "$S3_PORT" || die "port $S3_PORT is taken (set DERAIN_S3_PORT)"
    start_bg s3 "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT"
    wait_for s3 "$WAIT_S" s3_ok
    log "s3 (moto) on $AWS_ENDPOINT_URL, pid $(cat "$PIDS/s3")"
  fi
  timeout 60 "$BIN/python" -c 'import os, sys, s3fs
fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
fs.exists(sys.argv[1]) or fs.mkdir(sys.argv[1])' "$BUCKET" > "$LOGS/bucket.log" 2>&1 ||
    die "could not create bucket $BUCKET; log: $LOGS/bucket.log"

  start_ray  # before the Prefect server: a Ray that cannot start fails the stack early

  if alive prefect-server; then
    log "prefect server already running (pid $(cat "$PIDS/prefect-server"))"
  else
    port_free "$PREFECT_PORT" || die "port $PREFECT_PORT is taken (set DERAIN_PREFECT_PORT)"
    start_bg prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    wait_for prefect-server "$WAIT_S" prefect_ok
    log "prefect server on $PREFECT_API_URL, pid $(cat "$PIDS/prefect-server")"
  fi

  "$BIN/prefect" work-pool inspect "$POOL" > /dev/null 2>&1 ||
    "$BIN/prefect" work-pool create "$POOL" --type process > "$LOGS/work-pool.log" 2>&1 ||
    die "could not create work pool $POOL; log: $LOGS/work-pool.log"

  set_variables

  if alive prefect-worker; then
    log "prefect worker already running (pid $(cat "$PIDS/prefect-worker"))"
  else
    start_bg prefect-worker "$BIN/prefect" worker start --pool "$POOL" --type process \
      --name "$POOL-$(hostname)"
    wait_for prefect-worker "$WAIT_S" worker_ok
    log "prefect worker for pool $POOL, pid $(cat "$PIDS/prefect-worker")"
  fi
  log "ready: . $ENV_FILE"
}

stop_pid() {  # stop_pid NAME SIGNALS_BEFORE_KILL: TERM the process group, KILL after a while
  local name=$1 terms=$2 pid i n
  pid=$(cat "$PIDS/$name" 2>/dev/null) || return 0
  for ((n = 0; n < terms; n++)); do
    alive "$name" || break
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do
      alive "$name" || break
      sleep 0.5
    done
  done
  if alive "$name"; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  alive "$name" && die "$name (pid $pid) did not stop"
  rm -f "$PIDS/$name"
  log "stopped $name (pid $pid)"
}

stop() {
  [ -d "$STACK" ] || { log "nothing to stop ($STACK does not exist)"; return 0; }
  # The process worker ignores the first SIGTERM while it drains: send a second one.
  stop_pid prefect-worker 2
  if [ -x "$BIN/python" ] && [ -n "$(ray_pids)" ]; then
    # Not `ray stop`: it would stop every Ray instance of this user on the machine.
    "$BIN/python" infra/local/procs.py kill "$RAY_MARKER" --timeout 15 > /dev/null ||
      die "ray processes survived SIGKILL: $(ray_pids)"
    log "stopped ray"
  fi
  rm -f "$PIDS/ray"
  # Ray's temp dir under /tmp (sockets, session logs) goes with it, unless it was given.
  [ -n "${DERAIN_RAY_TEMP:-}" ] || rm -rf "$RAY_TEMP"
  stop_pid prefect-server 1
  stop_pid s3 1
}

status() {  # each service is asked, not just its PID: exit 0 only when all of them answer
  local down=0
  check() {  # check NAME WHAT CMD...
    local name=$1 what=$2 pid=""
    shift 2
    [ -f "$PIDS/$name" ] && pid=" (pid $(tr '\n' ' ' < "$PIDS/$name" | sed 's/ $//'))"
    if "$@" > /dev/null 2>&1; then
      echo "$name: up$pid: $what"
    else
      echo "$name: DOWN$pid: $what does not answer"
      down=$((down + 1))
    fi
  }
  if [ ! -f "$ENV_FILE" ]; then
    echo "stack not started here ($ENV_FILE missing)"
    return 1
  fi
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  check s3 "S3 endpoint $AWS_ENDPOINT_URL" s3_ok
  check prefect-server "Prefect API $PREFECT_API_URL/health" prefect_ok
  check prefect-worker "an ONLINE worker in pool $POOL" worker_ok
  check ray "Ray GCS at $RAY_ADDRESS (a live node)" ray_ok
  check ray "Ray Jobs API at $RAY_API_SERVER_ADDRESS" jobs_api_ok
  echo "logs: $LOGS; Ray session logs: $RAY_TEMP/session_latest/logs"
  [ "$down" -eq 0 ]
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
