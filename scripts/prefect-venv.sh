# shellcheck shell=bash
# Sourced by scripts/test (the differential template test, scripts/template-diff) and the Prefect
# end-to-end suite: the one Python venv holding a pinned Prefect (scripts/requirements-prefect.txt:
# prefect==3.8.8, fastapi>=0.139,<0.150 and the freeze of that install).
#
# pushpool_prefect_venv: makes sure `${CARGO_TARGET_DIR:-target}/prefect-venv` holds exactly those
# pins (installed on first use, ~1–2 min from PyPI or seconds from pip's cache; made anew when the
# requirements file changed or the venv was moved: a venv's scripts name its absolute path), then
# sets PUSHPOOL_PREFECT_VENV to its absolute path and returns 0. `$PUSHPOOL_PREFECT_VENV/bin/prefect`
# and `$PUSHPOOL_PREFECT_VENV/bin/python` are then usable. On failure it says why on stderr and
# returns 1; the caller decides whether that is fatal (it is under CI=true).
# Must be called from the repository root. Needs Python 3.11 ($PUSHPOOL_PREFECT_PYTHON, else
# python3.11, else python3 when that is >= 3.11) with venv + pip reaching PyPI (first run).
# Interface kept stable: the function name, PUSHPOOL_PREFECT_VENV, the venv path and the return codes.

pushpool_prefect_venv() {
  local venv py requirements stamp want
  venv="${CARGO_TARGET_DIR:-target}/prefect-venv"
  case "$venv" in /*) ;; *) venv="$(pwd)/$venv" ;; esac
  requirements="$(pwd)/scripts/requirements-prefect.txt"
  stamp="$venv/.requirements.sha256"
  want="$(sha256sum "$requirements" | cut -d' ' -f1) $venv"
  if [ -x "$venv/bin/python" ] && [ -x "$venv/bin/prefect" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    PUSHPOOL_PREFECT_VENV="$venv"
    return 0
  fi
  if [ -n "${PUSHPOOL_PREFECT_PYTHON:-}" ]; then
    py="$PUSHPOOL_PREFECT_PYTHON"
  elif command -v python3.11 >/dev/null 2>&1; then
    py=python3.11
  else
    py=python3
  fi
  if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "prefect-venv: $py is missing or older than Python 3.11 (set PUSHPOOL_PREFECT_PYTHON)" >&2
    return 1
  fi
  echo "prefect-venv: installing scripts/requirements-prefect.txt into $venv (first run, or the pins changed)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! "$py" -m venv "$venv" >&2; then
    echo "prefect-venv: cannot create a Python venv ($py -m venv)" >&2
    rm -rf "$venv"
    return 1
  fi
  # pip's own cache (~/.cache/pip) is used as is, so a re-install is quick.
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2; then
    echo "prefect-venv: pip install -r scripts/requirements-prefect.txt failed" >&2
    return 1
  fi
  if ! "$venv/bin/python" -c 'import prefect; assert prefect.__version__ == "3.8.8", prefect.__version__' >&2; then
    echo "prefect-venv: the installed Prefect is not 3.8.8" >&2
    return 1
  fi
  echo "$want" >"$stamp"
  PUSHPOOL_PREFECT_VENV="$venv"
}
