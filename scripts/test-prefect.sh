# shellcheck shell=bash
# Sourced by scripts/test: a Prefect server for the Prefect end-to-end suite (tests/prefect,
# docs/prefect.md).
#
# - The pinned Prefect venv comes from scripts/prefect-venv.sh (`pushpool_prefect_venv`, which
#   sets PUSHPOOL_PREFECT_VENV to target/prefect-venv with prefect==3.8.8).
# - Starts `prefect server start` on 127.0.0.1 and a free port with a temporary PREFECT_HOME,
#   waits until /api/health answers (about 10 s), exports PUSHPOOL_TEST_PREFECT_API_URL (the suite
#   then shares this one server; each test uses its own pools) and appends the server's PID to
#   the caller's `started_pids` array (scripts/test stops those on exit).
# - Without a venv or a server the suite skips locally; under CI=true that fails the run.

pushpool_start_prefect_server() {
  local port home log pid i
  if [ -n "${PUSHPOOL_TEST_PREFECT_API_URL:-}" ]; then
    echo "scripts/test: using the Prefect server at $PUSHPOOL_TEST_PREFECT_API_URL" >&2
    return 0
  fi
  if [ -f scripts/prefect-venv.sh ]; then
    # shellcheck source=/dev/null
    source scripts/prefect-venv.sh
    if ! pushpool_prefect_venv; then
      echo "scripts/test: no Prefect venv; the Prefect end-to-end suite cannot run" >&2
      return 1
    fi
    export PUSHPOOL_PREFECT_VENV
  fi
  if [ ! -x "${PUSHPOOL_PREFECT_VENV:-/nonexistent}/bin/prefect" ]; then
    echo "scripts/test: PUSHPOOL_PREFECT_VENV has no bin/prefect; the Prefect suite cannot run" >&2
    return 1
  fi
  port="$("$PUSHPOOL_PREFECT_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
  home="$(mktemp -d)"
  log="${CARGO_TARGET_DIR:-target}/prefect-server.log"
  PREFECT_HOME="$home" PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=false \
    "$PUSHPOOL_PREFECT_VENV/bin/prefect" server start --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
  pid=$!
  started_pids+=("$pid")
  for i in $(seq 1 300); do
    if "$PUSHPOOL_PREFECT_VENV/bin/python" - "$port" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/health", timeout=1).read()
PY
    then
      export PUSHPOOL_TEST_PREFECT_API_URL="http://127.0.0.1:$port/api"
      echo "scripts/test: Prefect server at $PUSHPOOL_TEST_PREFECT_API_URL (pid $pid, log $log)" >&2
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "scripts/test: prefect server exited at start; see $log" >&2
      return 1
    fi
    sleep 0.3
  done
  echo "scripts/test: prefect server did not answer within 90 s; see $log" >&2
  return 1
}

if ! pushpool_start_prefect_server; then
  if [ "${CI:-}" = "true" ]; then
    echo "scripts/test: under CI=true the Prefect end-to-end suite must run" >&2
    exit 1
  fi
  echo "scripts/test: WARNING: the Prefect end-to-end suite will be skipped" >&2
fi
