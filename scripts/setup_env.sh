#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment: CPU torch first, then the project.
# Sourced by scripts/test.sh and the CPU run scripts; safe to run on its own:
#   bash scripts/setup_env.sh [EXTRA]     # EXTRA defaults to "test"
# Afterwards $SGSD_PY is the environment's python.
set -euo pipefail

SGSD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SGSD_VENV="${SGSD_VENV:-$SGSD_ROOT/.venv}"
_extra="${1:-test}"

if [ ! -x "$SGSD_VENV/bin/python" ]; then
  echo "[setup] creating virtual environment at $SGSD_VENV"
  "${PYTHON:-python3}" -m venv "$SGSD_VENV"
  "$SGSD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
_log="$SGSD_VENV/setup.log"
_pip() {  # pip's build warnings go to a log, shown only if the install fails
  if ! "$SGSD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >"$_log" 2>&1; then
    cat "$_log" >&2
    echo "[setup] pip install $* failed (log: $_log)" >&2
    return 1
  fi
}
# torch FIRST and exactly this CPU build: any other torch spec pulls GBs of CUDA wheels.
echo "[setup] torch==2.13.0 (CPU), then sgsd-verl[$_extra] pinned by scripts/constraints-cpu.txt"
_pip "torch==2.13.0"
_pip -c "$SGSD_ROOT/scripts/constraints-cpu.txt" -e "$SGSD_ROOT[$_extra]"

export SGSD_PY="$SGSD_VENV/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
