# shellcheck shell=bash
# Sourced by scripts/test: provides LocalStack for the LocalStack-backed AWS Lambda suite
# (tests/providers/localstack.rs, docs/testing.md "LocalStack").
#
# - With a reachable Docker engine (`docker info` works) it starts nothing: it exports
#   PUSHPOOL_TEST_LOCALSTACK=testcontainers and PUSHPOOL_TEST_CARGO_FEATURES, and the tests start
#   LocalStack themselves through `testcontainers` (pushpool-testkit's `testcontainers` feature),
#   the way a user of the project runs it.
# - Without one (these machines) it runs `localstack-core` from PyPI as a process: a venv under
#   target/ (target/localstack-venv, Python 3.13, pinned in scripts/requirements-localstack.txt,
#   made once and kept), a self-signed TLS certificate generated here (LocalStack would download
#   one), GATEWAY_SERVER=hypercorn, a free loopback port; it waits for /_localstack/health, exports
#   PUSHPOOL_TEST_LOCALSTACK_URL and appends the PID to the caller's `started_pids` (scripts/test
#   stops those on exit).
# - On failure it says why and returns 1; scripts/test fails the run under CI=true, and locally
#   the LocalStack tests skip with a notice.
# Needs: Python 3.13 ($PUSHPOOL_LOCALSTACK_PYTHON, else python3.13 on PATH, else pyenv's) with venv +
# pip reaching PyPI on the first run (~1 min).

pushpool_localstack_python() {
  local candidate
  for candidate in "${PUSHPOOL_LOCALSTACK_PYTHON:-}" "$(command -v python3.13 2>/dev/null)" \
    "$(command -v pyenv >/dev/null 2>&1 && pyenv root 2>/dev/null)/versions/3.13"*/bin/python3.13 \
    "${PYENV_ROOT:-$HOME/.pyenv}/versions/3.13"*/bin/python3.13; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] \
      && "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 13) else 1)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

# Makes sure target/localstack-venv holds exactly the pins; sets PUSHPOOL_LOCALSTACK_VENV.
pushpool_localstack_venv() {
  local venv py requirements stamp want
  venv="${CARGO_TARGET_DIR:-target}/localstack-venv"
  case "$venv" in /*) ;; *) venv="$(pwd)/$venv" ;; esac
  requirements="$(pwd)/scripts/requirements-localstack.txt"
  stamp="$venv/.requirements.sha256"
  want="$(sha256sum "$requirements" | cut -d' ' -f1) $venv"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    PUSHPOOL_LOCALSTACK_VENV="$venv"
    return 0
  fi
  if ! py="$(pushpool_localstack_python)"; then
    echo "scripts/test: LocalStack needs Python 3.13 (set PUSHPOOL_LOCALSTACK_PYTHON, or install it with pyenv)" >&2
    return 1
  fi
  echo "scripts/test: installing scripts/requirements-localstack.txt into $venv with $py (first run, or the pins changed)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! "$py" -m venv "$venv" >&2; then
    echo "scripts/test: cannot create a Python 3.13 venv ($py -m venv)" >&2
    rm -rf "$venv"
    return 1
  fi
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2; then
    echo "scripts/test: pip install -r scripts/requirements-localstack.txt failed" >&2
    return 1
  fi
  echo "$want" >"$stamp"
  PUSHPOOL_LOCALSTACK_VENV="$venv"
}

pushpool_start_localstack() {
  local root dir venv port log pid i
  root="$(pwd)"
  if [ -n "${PUSHPOOL_TEST_LOCALSTACK_URL:-}" ]; then
    echo "scripts/test: using LocalStack at $PUSHPOOL_TEST_LOCALSTACK_URL" >&2
    return 0
  fi
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    export PUSHPOOL_TEST_LOCALSTACK=testcontainers
    export PUSHPOOL_TEST_CARGO_FEATURES="pushpool-testkit/testcontainers"
    echo "scripts/test: a Docker engine answers: the LocalStack tests start LocalStack through testcontainers" >&2
    return 0
  fi
  pushpool_localstack_venv || return 1
  venv="$PUSHPOOL_LOCALSTACK_VENV"
  dir="${CARGO_TARGET_DIR:-target}/localstack"
  case "$dir" in /*) ;; *) dir="$root/$dir" ;; esac
  rm -rf "$dir/fs"
  mkdir -p "$dir"
  # LocalStack downloads its TLS certificate at start; offline it needs one made here.
  if [ ! -s "$dir/server.test.pem" ]; then
    "$venv/bin/python" - "$dir/server.test.pem" <<'PY' || return 1
import datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256()))
with open(sys.argv[1], "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()))
    f.write(cert.public_bytes(serialization.Encoding.PEM))
PY
  fi
  port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
  log="$dir/localstack.log"
  (
    cd "$dir" || exit 1
    exec env GATEWAY_LISTEN="127.0.0.1:$port" LOCALSTACK_HOST="127.0.0.1:$port" \
      GATEWAY_SERVER=hypercorn CUSTOM_SSL_CERT_PATH="$dir/server.test.pem" SKIP_SSL_CERT_DOWNLOAD=1 \
      FILESYSTEM_ROOT="$dir/fs" DISABLE_EVENTS=1 DNS_ADDRESS=0 SQS_ENDPOINT_STRATEGY=path \
      SERVICES=lambda,sqs,sts,iam,logs \
      "$venv/bin/python" -m localstack.runtime.main
  ) >"$log" 2>&1 &
  pid=$!
  started_pids+=("$pid")
  for i in $(seq 1 300); do
    if "$venv/bin/python" - "$port" <<'PY' 2>/dev/null
import json, sys, urllib.request
health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/_localstack/health", timeout=1))
sys.exit(0 if health["services"].get("lambda") in ("available", "running") else 1)
PY
    then
      export PUSHPOOL_TEST_LOCALSTACK_URL="http://127.0.0.1:$port"
      echo "scripts/test: LocalStack (localstack-core, no Docker: function code is not run) at $PUSHPOOL_TEST_LOCALSTACK_URL (pid $pid, log $log)" >&2
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "scripts/test: LocalStack exited at start; see $log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "scripts/test: LocalStack did not answer on port $port within 60 s; see $log" >&2
  return 1
}
