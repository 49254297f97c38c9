# Sourced last by scripts/run_*_qwen3_4b_sokoban.sh, never run on its own: multi-turn Sokoban
# episodes through verl's agent loop (recipe/sgsd/agent_loop.py, docs/agents.md) for every mode of
# the recipe, on one backbone. The sourcing script has turned on `set -xeuo pipefail`, sourced
# lib/common.sh and set METHOD (grpo | skill_sd | sdar | sgsd); its arguments arrive here as "$@"
# and reach the entry point last, so Hydra lets them win. `${VAR:-default}`s come from the
# environment; plain assignments are the papers' values or marked as chosen here.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "scripts/lib/sokoban_body.sh is sourced by scripts/run_*_qwen3_4b_sokoban.sh; run one of those" >&2
    exit 2
fi

VARIANT=${VARIANT:-$METHOD}  # or a named variant of the same family: python3 -m recipe.sgsd.variants list
# Skill-SD's Sokoban backbone (its paper); every method here trains it, so the four compare.
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-4B-Instruct-2507}
# python3 scripts/prepare_data.py --dataset sokoban  (seeded levels, test seeds disjoint from train)
TRAIN_FILE=${TRAIN_FILE:-$HOME/data/sgsd/sokoban_train.parquet}
VAL_FILE=${VAL_FILE:-$HOME/data/sgsd/sokoban_test.parquet}
NNODES=${NNODES:-1}
N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-8}
ENCODER_DEVICE=${ENCODER_DEVICE:-auto}
PROJECT_NAME=${PROJECT_NAME:-sgsd_sokoban}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-${VARIANT}_qwen3_4b_instruct_sokoban}

# SDAR (its paper's agent settings): n = 8, lr 1e-6, each response <= 512 tokens, lambda 0.01 and
# beta 5 (the sdar variant's distill_coef and sgsd.sdar.beta). Skill-SD: lambda 0.001 (the
# skill_sd variant's distill_coef). Both on a GRPO backbone with its KL term (the variants').
ROLLOUTS=8
LR=1e-6
TURN_TOKENS=512              # sgsd.agent.max_turn_tokens: each assistant turn
# Chosen here (neither paper gives them for Sokoban): levels of prepare_data's defaults (6x6,
# one box, 20 turns); the trajectory budget holds a full 20-turn episode of short replies and
# observations (~120 tokens each) or ~12 turns of 512-token replies; sampling at temperature 1.
RESPONSE_LENGTH=8192         # the whole trajectory: assistant turns + observations
MAX_PROMPT_LENGTH=1024       # the task message (rules, legend, first board) is ~300 tokens
TEMPERATURE=1.0
TOP_P=1.0
TOP_K=-1
TRAIN_BATCH_SIZE=16          # levels per step
TOTAL_STEPS=200
SAVE_FREQ=25
TEST_FREQ=25
VAL_SAMPLES=4
VAL_TEMPERATURE=1.0
VAL_TOP_P=1.0
VAL_TOP_K=-1
GRAD_CLIP=1.0
LORA_RANK=64                 # as every run of this project (SGSD's App. E.1)
LORA_ALPHA=128
TRAIN_TOKENS_PER_GPU=$((MAX_PROMPT_LENGTH + RESPONSE_LENGTH))
TEACHER_PROMPT_LENGTH=2048   # the task message + the mode's skills (only the skills are cut to fit)
LOGPROB_TOKENS_PER_GPU=$((TEACHER_PROMPT_LENGTH + RESPONSE_LENGTH))
ROLLOUT_TP=1
ROLLOUT_GPU_MEMORY=0.5
THINKING=false               # an Instruct model: no think blocks

EPISODE_OVERRIDES=(
    sgsd.agent.max_turn_tokens="$TURN_TOKENS"
    sgsd.student_thinking="$THINKING"
    sgsd.teacher_thinking="$THINKING"
    sgsd.logprob_temperature="$TEMPERATURE"
    sgsd.max_teacher_prompt_length="$TEACHER_PROMPT_LENGTH"
    sgsd.encoder="$SKILL_ENCODER"
    sgsd.encoder_device="$ENCODER_DEVICE"
    ++data.apply_chat_template_kwargs.enable_thinking="$THINKING"
    reward.custom_reward_function.path=pkg://sgsd.verifier   # solved = 1 (the agent loop's outcome)
    reward.custom_reward_function.name=compute_score
)
case "$METHOD" in
    sdar) EPISODE_OVERRIDES+=(sgsd.skills.files=sokoban) ;;  # the shipped Sokoban skill file
    sgsd)
        # SGSD's own settings (its Tab. 12: one rollout, a live teacher, K = 8) with a bank that
        # starts empty and grows from the policy's own episodes every UPDATE_FREQ steps (no
        # Sokoban bank is released; chosen here: a shorter period than math's 25)
        ROLLOUTS=1
        EPISODE_OVERRIDES+=(sgsd.bank_path="${BANK_PATH:-empty}" sgsd.top_k=8 sgsd.update.freq="${UPDATE_FREQ:-5}"
                            "sgsd.update.writer='${SKILL_WRITER:-policy}'" sgsd.update.enable_thinking="$THINKING")
        ;;
esac

verl_overrides
variant_info
if [[ "$VARIANT_STUDENT_SKILLS" == 1 ]]; then
    echo "VARIANT=$VARIANT shows skills in the student prompt, from math data prepared with a bank; no such" \
         "Sokoban data exists: pick a variant without student skills (python3 -m recipe.sgsd.variants list)" >&2
    exit 2
fi
variant_overrides "$(sed -n 's/^script=//p' <<<"$VARIANT_INFO")"  # either family: the episodes are the same
python3 -m recipe.sgsd.main_sgsd \
    algorithm.adv_estimator="$VARIANT_ESTIMATOR" \
    "${VERL_OVERRIDES[@]}" \
    "${EPISODE_OVERRIDES[@]}" \
    "${VARIANT_OVERRIDES[@]}" \
    "$@"
