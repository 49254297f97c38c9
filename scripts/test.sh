#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment and run the CPU test suite.
#
#   bash scripts/test.sh            # everything CI runs
#   bash scripts/test.sh -k bank    # extra arguments go to pytest
#
# On a fresh machine this creates .venv (or $SGSD_VENV) through scripts/setup_env.sh:
# the CPU build of torch first, then the project with its test extra, pinned.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh" test
cd "$ROOT"

# pytest exits 5 when it collects no test; that is a failure here (and in CI), never a pass.
set +e
"$SGSD_PY" -m pytest "$@"
status=$?
set -e
[ "$status" -eq 5 ] && echo "[test.sh] pytest collected no tests: failing" >&2
exit "$status"
