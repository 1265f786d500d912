# shellcheck shell=bash
# Sourced by scripts/test-emulators.sh and scripts/schema-fuzz: the one Python venv of the test
# tools (moto, schemathesis, openapi-spec-validator), pinned in scripts/requirements-test.txt.
#
# pushpool_test_venv: makes sure `${CARGO_TARGET_DIR:-target}/test-venv` holds exactly those pins
# (installed on first use, ~1 min from PyPI; made anew when the requirements file changed or the
# venv was moved: a venv's scripts name its absolute path, so a moved target/ would break it),
# then sets PUSHPOOL_TEST_VENV to its path and returns 0. On failure it says why on stderr and
# returns 1; the caller decides whether that is fatal (it is under CI=true).
# Must be called from the repository root. Needs python3 >= 3.11 (or $PUSHPOOL_PYTHON) with venv +
# pip reaching PyPI (first run).

pushpool_test_venv() {
  local venv py requirements stamp want
  venv="${CARGO_TARGET_DIR:-target}/test-venv"
  case "$venv" in /*) ;; *) venv="$(pwd)/$venv" ;; esac
  py="${PUSHPOOL_PYTHON:-python3}"
  requirements="$(pwd)/scripts/requirements-test.txt"
  stamp="$venv/.requirements.sha256"
  want="$(sha256sum "$requirements" | cut -d' ' -f1) $venv"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    PUSHPOOL_TEST_VENV="$venv"
    return 0
  fi
  echo "test-venv: installing scripts/requirements-test.txt into $venv (first run, or the pins changed)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! "$py" -m venv "$venv" >&2; then
    echo "test-venv: cannot create a Python venv ($py -m venv)" >&2
    rm -rf "$venv"
    return 1
  fi
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2; then
    echo "test-venv: pip install -r scripts/requirements-test.txt failed" >&2
    return 1
  fi
  echo "$want" >"$stamp"
  PUSHPOOL_TEST_VENV="$venv"
}
