# shellcheck shell=bash
# Sourced by scripts/test: provides a moto server (AWS emulator) for the AWS Lambda provider tests.
#
# - Uses the test tools' venv (scripts/test-venv.sh: target/test-venv, pinned in
#   scripts/requirements-test.txt) for `moto[server]`.
# - Starts `moto_server` on 127.0.0.1 and a free port, waits until it answers, switches its Lambda
#   backend to the no-Docker mode (the payload is echoed), exports PUSHPOOL_TEST_MOTO_URL and appends
#   the server's PID to the caller's `started_pids` array (scripts/test stops those on exit).
# - On failure it prints why and leaves PUSHPOOL_TEST_MOTO_URL unset: the Lambda suite then skips
#   locally and fails under CI=true.
# Needs: python3 with venv + pip reaching PyPI (first run only, ~1 min), python3 for the probes.

# shellcheck source=scripts/test-venv.sh
source scripts/test-venv.sh

pushpool_start_moto() {
  local root venv port log pid i
  root="$(pwd)"
  if [ -n "${PUSHPOOL_TEST_MOTO_URL:-}" ]; then
    echo "scripts/test: using the moto server at $PUSHPOOL_TEST_MOTO_URL" >&2
    return 0
  fi
  if ! pushpool_test_venv; then
    echo "scripts/test: no Python test venv; the AWS Lambda emulator tests have no moto" >&2
    return 0
  fi
  venv="$PUSHPOOL_TEST_VENV"
  port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
  log="$root/target/moto-server.log"
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  pid=$!
  started_pids+=("$pid")
  for i in $(seq 1 150); do
    if "$venv/bin/python" - "$port" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=1).read()
PY
    then
      break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "scripts/test: moto_server exited at start; see $log" >&2
      return 0
    fi
    sleep 0.2
  done
  if ! "$venv/bin/python" - "$port" <<'PY' >&2
import json, sys, urllib.request
req = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/moto-api/config",
    data=json.dumps({"lambda": {"use_docker": False}}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
urllib.request.urlopen(req, timeout=5).read()
PY
  then
    echo "scripts/test: moto_server on port $port did not answer; see $log" >&2
    return 0
  fi
  export PUSHPOOL_TEST_MOTO_URL="http://127.0.0.1:$port"
  echo "scripts/test: moto server at $PUSHPOOL_TEST_MOTO_URL (pid $pid, log $log)" >&2
}

pushpool_start_moto
