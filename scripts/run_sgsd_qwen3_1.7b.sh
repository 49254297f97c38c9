#!/usr/bin/env bash
# SGSD on Qwen3-1.7B with the paper's settings (App. E.1, Tab. 11-12), through verl 0.9.1.
# This file holds what differs per model; scripts/lib/sgsd_body.sh the settings every model
# shares (each commented with its source) and the launch.
#
#   python3 scripts/prepare_data.py --dataset math_train   # -> $HOME/data/sgsd/math_train.parquet
#   python3 scripts/prepare_data.py --dataset aime24       # -> $HOME/data/sgsd/aime24.parquet
#   bash scripts/run_sgsd_qwen3_1.7b.sh [hydra overrides: they win, e.g. sgsd.top_k=4]
#   SGSD_DRY_RUN=1 bash scripts/run_sgsd_qwen3_1.7b.sh   # validate the config, launch nothing
#
# The paper trains on DAPO-Math-17k's English subset: `python3 scripts/prepare_data.py --dataset
# dapo-math-17k`, then TRAIN_FILE=$HOME/data/sgsd/dapo-math-17k.parquet. More validation sets:
# VAL_FILE="[$HOME/data/sgsd/aime24.parquet,$HOME/data/sgsd/aime25.parquet]". The body's
# ${VAR:-default}s (VARIANT, TRAIN_FILE, N_GPUS_PER_NODE, SKILL_WRITER, ...) come from the environment too.
set -xeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-1.7B}
BANK_PATH=${BANK_PATH:-qwen3_1.7b}  # the cold-start bank released with SGSD
MODEL_TAG=qwen3_1_7b  # EXPERIMENT_NAME defaults to ${VARIANT}_qwen3_1_7b
LOGPROB_TOKENS_PER_GPU=32768  # log-prob passes: a full-length teacher sequence (20000 + 1024), packed with more

source "$(dirname "${BASH_SOURCE[0]}")/lib/sgsd_body.sh" "$@"
