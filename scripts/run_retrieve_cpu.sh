#!/usr/bin/env bash
# Interim main job on its embedded default: set up the environment, then retrieve the
# K=8 skill-mistake teachers of every AIME24 problem from the Qwen3-1.7B bank released
# with SGSD, with the packaged all-MiniLM-L6-v2 encoder, on CPU. No hub access needed.
#
#   bash scripts/run_retrieve_cpu.sh                      # human-readable
#   bash scripts/run_retrieve_cpu.sh --json --top-k 4     # extra flags go to `sgsd retrieve`
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh" test

BANK="${BANK:-qwen3_1.7b}"          # a shipped bank name or a path
PROBLEMS="${PROBLEMS:-aime24}"      # a shipped benchmark name or a JSONL of {"problem": ...}
TOP_K="${TOP_K:-8}"

"$SGSD_VENV/bin/sgsd" retrieve --bank "$BANK" --problems "$PROBLEMS" --top-k "$TOP_K" "$@"
