#!/usr/bin/env bash
# Skill-SD (trajectory-summary teacher, lambda 0.001) on
# multi-turn Sokoban with Qwen3-4B-Instruct-2507, through verl 0.9.1's agent loop.
# scripts/lib/sokoban_body.sh holds the settings the four Sokoban scripts share (each with its source).
#
#   python3 scripts/prepare_data.py --dataset sokoban   # -> $HOME/data/sgsd/sokoban_{train,test}.parquet
#   bash scripts/run_skillsd_qwen3_4b_sokoban.sh [hydra overrides: they win]
#   SGSD_DRY_RUN=1 bash scripts/run_skillsd_qwen3_4b_sokoban.sh   # validate the config, launch nothing
#   bash scripts/simulate_gpu_run.sh scripts/run_skillsd_qwen3_4b_sokoban.sh   # one step of it on CPU ranks
set -xeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

METHOD=skill_sd
source "$(dirname "${BASH_SOURCE[0]}")/lib/sokoban_body.sh" "$@"
