#!/usr/bin/env bash
# The GRPO baseline on Qwen3-8B (paper Tab. 11 GRPO column, App. E.1): the same recipe and
# entry point as SGSD with `algorithm.adv_estimator=grpo`, which makes it verl's own GRPO run.
#
#   python3 scripts/prepare_data.py --dataset math_train   # -> $HOME/data/sgsd/math_train.parquet
#   python3 scripts/prepare_data.py --dataset aime24       # -> $HOME/data/sgsd/aime24.parquet
#   bash scripts/run_grpo_qwen3_8b.sh [hydra overrides: they win]
#   SGSD_DRY_RUN=1 bash scripts/run_grpo_qwen3_8b.sh   # validate the config, launch nothing
#   VARIANT=sdar bash scripts/run_grpo_qwen3_8b.sh       # Skill-SD, SDAR, RLSD on this backbone (docs/methods.md)
#
# The paper trains on DAPO-Math-17k's English subset: `python3 scripts/prepare_data.py --dataset
# dapo-math-17k`, then TRAIN_FILE=$HOME/data/sgsd/dapo-math-17k.parquet.
set -xeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-8B}
VARIANT=${VARIANT:-grpo}  # a baseline/ablation by name: python3 -m recipe.sgsd.variants list
choose_train_file         # TRAIN_FILE: math_train(_skills).parquet, as the variant needs
VAL_FILE=${VAL_FILE:-$HOME/data/sgsd/aime24.parquet}
NNODES=${NNODES:-1}
N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-8}   # the paper: eight A800s
PROJECT_NAME=${PROJECT_NAME:-sgsd}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-${VARIANT}_qwen3_8b}

# The paper: App. E.1 (every method), Tab. 11 (GRPO column: no top-p / top-k), Sec. 4.1.
LORA_RANK=64
LORA_ALPHA=128
LR=5e-6
ROLLOUTS=8                   # generations per prompt (the group)
RESPONSE_LENGTH=16000        # completion length
MAX_PROMPT_LENGTH=2048       # prompt length
TEMPERATURE=1.2
TOP_P=1.0                    # not used by GRPO (Tab. 11): vLLM's neutral values
TOP_K=-1
TOTAL_STEPS=200
SAVE_FREQ=25
TEST_FREQ=25
VAL_SAMPLES=12               # avg@12, temperature 1.0, top-p 0.95, no top-k
VAL_TEMPERATURE=1.0
VAL_TOP_P=0.95
VAL_TOP_K=-1

# Not in the paper: chosen here. Tab. 11 lists every setting that differs between methods, so the
# rest follows the SGSD scripts (the official release's GRPO script differs: 4 problems x 8, 2 epochs).
TRAIN_BATCH_SIZE=16          # problems per step, as SGSD: only Tab. 11's rows differ between methods
GRAD_CLIP=1.0                # release: the TRL default for GRPO
STUDENT_THINKING=true        # the release's GRPO prompt keeps Qwen3's default; 16000 tokens leave room
TRAIN_TOKENS_PER_GPU=18432   # one full-length sequence (2048 + 16000) per micro-batch, packed
LOGPROB_TOKENS_PER_GPU=18432
ROLLOUT_TP=1
ROLLOUT_GPU_MEMORY=0.5

# The sibling methods on this backbone (VARIANT=skill_sd | sdar | rlsd | grpo_opsd ...: docs/methods.md)
# run in the SGSD trainer (estimator sgsd: GRPO's advantages with n > 1) and read these `sgsd:` keys;
# a plain GRPO run validates and ignores them.
# The teacher's prompt: the student prompt (<= 2048; math problems ~100-300) + the skill text, which
# alone is cut to fit; 2432 + 16000 completion tokens = one teacher sequence per 18432-token log-prob micro-batch.
TEACHER_PROMPT_LENGTH=2432
SIBLING_OVERRIDES=(
    sgsd.student_thinking="$STUDENT_THINKING"   # the teacher's chat template is the student's
    sgsd.teacher_thinking="$STUDENT_THINKING"
    sgsd.logprob_temperature="$TEMPERATURE"     # as GRPO: every log-prob at the sampling temperature
    sgsd.max_teacher_prompt_length="$TEACHER_PROMPT_LENGTH"
    sgsd.encoder="$SKILL_ENCODER"               # sgsd.skills.strategy=embedding
)

verl_overrides
variant_overrides grpo
python3 -m recipe.sgsd.main_sgsd \
    algorithm.adv_estimator="$VARIANT_ESTIMATOR" \
    "${VERL_OVERRIDES[@]}" \
    "${SIBLING_OVERRIDES[@]}" \
    reward.custom_reward_function.path=pkg://sgsd.verifier \
    reward.custom_reward_function.name=compute_score \
    ++data.apply_chat_template_kwargs.enable_thinking=$STUDENT_THINKING \
    "${VARIANT_OVERRIDES[@]}" \
    "$@"
