#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment: CPU torch first, then the project.
# Sourced by scripts/test.sh and the CPU run scripts; safe to run on its own:
#   bash scripts/setup_env.sh [EXTRA]     # EXTRA defaults to "test"
# Afterwards $SGSD_PY is the environment's python.
#
# pip runs only when the inputs changed: $SGSD_VENV/.sgsd-setup-stamp holds a hash of the venv's
# python version, this checkout's path, pyproject.toml, scripts/constraints-cpu.txt, EXTRA, the
# torch pin and this file, written after both installs succeeded. The install is editable, so
# source edits need none. SGSD_FORCE_SETUP=1 installs anyway (e.g. after a manual pip change).
set -euo pipefail

SGSD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SGSD_VENV="${SGSD_VENV:-$SGSD_ROOT/.venv}"
_extra="${1:-test}"
_torch="torch==2.13.0"  # exactly this CPU build: any other torch spec pulls GBs of CUDA wheels
_constraints="$SGSD_ROOT/scripts/constraints-cpu.txt"

if [ ! -x "$SGSD_VENV/bin/python" ]; then
  echo "[setup] creating virtual environment at $SGSD_VENV"
  "${PYTHON:-python3}" -m venv "$SGSD_VENV"
  "$SGSD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
_stamp="$SGSD_VENV/.sgsd-setup-stamp"
# Empty when the venv's python does not run: no stamp matches that, and pip then says why.
_pyver="$("$SGSD_VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || true)"
_sha256() { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi; }  # shasum: macOS
_hash="$( { printf '%s\n' "$_pyver" "$SGSD_ROOT" "$_extra" "$_torch"
            cat "$SGSD_ROOT/pyproject.toml" "$_constraints" "${BASH_SOURCE[0]}"; } | _sha256 | cut -c1-16)"

if [ -n "$_pyver" ] && [ "${SGSD_FORCE_SETUP:-0}" != 1 ] && [ "$(cat "$_stamp" 2>/dev/null)" = "$_hash" ]; then
  echo "[setup] $(basename "$SGSD_VENV") is up to date (sgsd-verl[$_extra], $_torch, stamp $_hash; SGSD_FORCE_SETUP=1 reinstalls)"
else
  rm -f "$_stamp"  # a failed or interrupted install below must not leave an old stamp that matches later
  _log="$SGSD_VENV/setup.log"
  _pip() {  # pip's build warnings go to a log, shown only if the install fails
    if ! "$SGSD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >"$_log" 2>&1; then
      cat "$_log" >&2
      echo "[setup] pip install $* failed (log: $_log)" >&2
      return 1
    fi
  }
  # torch FIRST and exactly this CPU build, then the project, every version pinned.
  echo "[setup] $_torch (CPU), then sgsd-verl[$_extra] pinned by scripts/constraints-cpu.txt"
  if _pip "$_torch" && _pip -c "$_constraints" -e "$SGSD_ROOT[$_extra]"; then
    echo "$_hash" >"$_stamp"
  else
    exit 1  # also where `set -e` does not reach (sourced in a condition); ends a sourcing script
  fi
fi

export SGSD_PY="$SGSD_VENV/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
