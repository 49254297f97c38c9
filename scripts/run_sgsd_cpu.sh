#!/usr/bin/env bash
# The main job on its embedded default, on a CPU: set up .venv (as scripts/test.sh does), write
# verl parquet of the rulebook task (sgsd/rulebook.py: a synthetic task where guidance helps),
# and run SGSD for 12 steps through verl 0.9.1's real trainer (recipe.sgsd.main_sgsd) on the
# shipped model pretrained on that task (sgsd/task_model.py), with the rulebook's skill bank
# (right and misleading items) and the packaged MiniLM encoder; validation accuracy before
# training and every 2 steps. Prints the path of the metrics file (verl's `file` logger: one
# JSON object per step, verl's metrics + sgsd/*).
#
#   bash scripts/run_sgsd_cpu.sh                          # SGSD on the rulebook, 12 steps
#   STEPS=2 bash scripts/run_sgsd_cpu.sh sgsd.top_k=8     # extra Hydra overrides pass through
#   ESTIMATOR=grpo bash scripts/run_sgsd_cpu.sh           # the same run as GRPO
#   VARIANT=opsd bash scripts/run_sgsd_cpu.sh             # a baseline/ablation by name (recipe/sgsd/variants.py)
#   TASK=math bash scripts/run_sgsd_cpu.sh                # the shipped MATH subset on a random tiny model (4 steps)
#   TASK=sokoban bash scripts/run_sgsd_cpu.sh             # multi-turn Sokoban episodes through verl's agent loop
#                                                         # (with VARIANT=skill_sd | sdar, ESTIMATOR=grpo too)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh" test

TASK="${TASK:-rulebook}"
if [ "$TASK" = rulebook ]; then WORKDIR="${WORKDIR:-$ROOT/outputs/sgsd_cpu}"; else WORKDIR="${WORKDIR:-$ROOT/outputs/sgsd_cpu_$TASK}"; fi
STEPS="${STEPS:-}"
ESTIMATOR="${ESTIMATOR:-sgsd}"

cd "$ROOT"
"$SGSD_PY" -m recipe.sgsd.cpu.run --workdir "$WORKDIR" ${STEPS:+--steps "$STEPS"} --estimator "$ESTIMATOR" \
    --task "$TASK" ${VARIANT:+--variant "$VARIANT"} "$@"
