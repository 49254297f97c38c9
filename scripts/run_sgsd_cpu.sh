#!/usr/bin/env bash
# The main job on its embedded default, on a CPU: set up .venv (as scripts/test.sh does),
# build a tiny local Qwen3 (no hub), write a verl parquet from the shipped MATH subset, and
# run SGSD for a few steps through verl 0.9.1's real trainer (recipe.sgsd.main_sgsd) with
# the shipped Qwen3-1.7B skill bank and the packaged MiniLM encoder. Prints the path of the
# metrics file (verl's `file` logger: one JSON object per step, verl's metrics + sgsd/*).
#
#   bash scripts/run_sgsd_cpu.sh                          # SGSD, 4 steps
#   STEPS=2 bash scripts/run_sgsd_cpu.sh sgsd.top_k=8     # extra Hydra overrides pass through
#   ESTIMATOR=grpo bash scripts/run_sgsd_cpu.sh           # the same run as GRPO
#   VARIANT=opsd bash scripts/run_sgsd_cpu.sh             # a baseline/ablation by name (recipe/sgsd/variants.py)
#   TASK=sokoban bash scripts/run_sgsd_cpu.sh             # multi-turn Sokoban episodes through verl's agent loop
#                                                         # (with VARIANT=skill_sd | sdar, ESTIMATOR=grpo too)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh" test

TASK="${TASK:-math}"
if [ "$TASK" = math ]; then WORKDIR="${WORKDIR:-$ROOT/outputs/sgsd_cpu}"; else WORKDIR="${WORKDIR:-$ROOT/outputs/sgsd_cpu_$TASK}"; fi
STEPS="${STEPS:-4}"
ESTIMATOR="${ESTIMATOR:-sgsd}"

cd "$ROOT"
"$SGSD_PY" -m recipe.sgsd.cpu.run --workdir "$WORKDIR" --steps "$STEPS" --estimator "$ESTIMATOR" \
    --task "$TASK" ${VARIANT:+--variant "$VARIANT"} "$@"
