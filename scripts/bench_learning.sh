#!/usr/bin/env bash
# Every method trained on the rulebook through verl's real trainer on CPU, side by side, over
# seeds: a markdown table and learning curves (scripts/bench_learning.py has the details).
#
#   bash scripts/bench_learning.sh                                  # 9 methods x 3 seeds -> outputs/bench_learning
#   bash scripts/bench_learning.sh --methods grpo,sgsd --seeds 0 1  # arguments go to bench_learning.py
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh" test
cd "$ROOT"
exec "$SGSD_PY" scripts/bench_learning.py "$@"
