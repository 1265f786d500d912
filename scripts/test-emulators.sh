# shellcheck shell=bash
# Sourced by scripts/test: provides a moto server (AWS emulator) for the AWS Lambda provider tests.
#
# - Creates a Python venv under target/emulators-venv (only when missing) with `moto[server]`.
# - Starts `moto_server` on 127.0.0.1 and a free port, waits until it answers, switches its Lambda
#   backend to the no-Docker mode (the payload is echoed), exports PUSHPOOL_TEST_MOTO_URL and appends
#   the server's PID to the caller's `started_pids` array (scripts/test stops those on exit).
# - On failure it prints why and leaves PUSHPOOL_TEST_MOTO_URL unset: the Lambda suite then skips
#   locally and fails under CI=true.
# Needs: python3 with venv + pip reaching PyPI (first run only, ~20 s), curl or python3 for the probes.

pushpool_start_moto() {
  local root venv py port log pid i
  root="$(pwd)"
  venv="$root/target/emulators-venv"
  py="${PUSHPOOL_PYTHON:-python3}"
  if [ -n "${PUSHPOOL_TEST_MOTO_URL:-}" ]; then
    echo "scripts/test: using the moto server at $PUSHPOOL_TEST_MOTO_URL" >&2
    return 0
  fi
  if [ ! -x "$venv/bin/moto_server" ]; then
    echo "scripts/test: creating $venv with moto[server] (first run only)" >&2
    mkdir -p "$root/target"
    if ! "$py" -m venv "$venv" >&2; then
      echo "scripts/test: cannot create a Python venv ($py -m venv); the AWS Lambda emulator tests have no moto" >&2
      return 0
    fi
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' >&2; then
      echo "scripts/test: pip install 'moto[server]' failed; the AWS Lambda emulator tests have no moto" >&2
      rm -rf "$venv"
      return 0
    fi
  fi
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
