# Sourced last by scripts/run_sgsd_qwen3_*.sh, never run on its own: the paper's SGSD settings
# that every model shares, and the launch. The sourcing script has turned on `set -xeuo pipefail`,
# sourced lib/common.sh and set what differs per model: MODEL_PATH, BANK_PATH, MODEL_TAG (the
# experiment name's suffix) and LOGPROB_TOKENS_PER_GPU. Its arguments arrive here as "$@"
# and reach the entry point last, so Hydra lets them win. A `${VAR:-default}` below can be set
# from the environment; a plain assignment is the paper's value (change it with a Hydra override).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "scripts/lib/sgsd_body.sh is sourced by scripts/run_sgsd_qwen3_*.sh; run one of those" >&2
    exit 2
fi

VARIANT=${VARIANT:-sgsd}  # a baseline/ablation by name: python3 -m recipe.sgsd.variants list
choose_train_file         # TRAIN_FILE: math_train(_skills).parquet, as the variant needs
VAL_FILE=${VAL_FILE:-$HOME/data/sgsd/aime24.parquet}
NNODES=${NNODES:-1}
N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-8}   # the paper: eight A800s
ENCODER_DEVICE=${ENCODER_DEVICE:-auto}  # the retriever, in the trainer process: its GPU if it sees one, else cpu
PROJECT_NAME=${PROJECT_NAME:-sgsd}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-${VARIANT}_${MODEL_TAG}}

# The paper: App. E.1 (every method), Tab. 11 (SGSD column), Tab. 12, Sec. 4.1.
LORA_RANK=64
LORA_ALPHA=128
LR=5e-6
ROLLOUTS=1                   # generations per prompt
RESPONSE_LENGTH=1024         # completion length
TEACHER_PROMPT_LENGTH=20000  # prompt length: the token budget of a teacher prompt
TEMPERATURE=1.1
TOP_P=0.95
TOP_K=20
ENCODER=$SKILL_ENCODER       # Qwen3-Embedding-0.6B (scripts/lib/retrieval.sh: eval.sh's and prepare_data.py's too)
TEACHERS=8                   # K: the top-8 skill-mistake pairs, one teacher each (OPSD+Skill: its
                             # data's STUDENT_SKILLS_TOP_K, see sgsd_overrides in lib/common.sh)
TEACHER=live                 # the synchronized self-teacher
STUDENT_THINKING=false
TEACHER_THINKING=true
TAU=1.0
CLIP=3.0
THRESHOLD=0.05
TOTAL_STEPS=200
SAVE_FREQ=25
TEST_FREQ=25                 # the paper evaluates every checkpoint...
VAL_SAMPLES=12               # ...avg@12, temperature 1.0, top-p 0.95, no top-k (but at most
VAL_TEMPERATURE=1.0          # RESPONSE_LENGTH tokens here, not the paper's 38912)
VAL_TOP_P=0.95
VAL_TOP_K=-1
SKILL_UPDATE=${SKILL_UPDATE:-true}  # the paper's online evolution (Alg. 4); false = a fixed bank
SKILL_WRITER=${SKILL_WRITER:-policy}  # the policy via verl's rollout server, or an LLM spec
                             # (openai:http://host:8000/v1#MODEL on other GPUs, or transformers:/path on the CPU)
UPDATE_FREQ=25
UPDATE_SUCCESS=0.8
UPDATE_MAX_NEW=5
UPDATE_CAPACITY=30

# Not in the paper: the official release's scripts/run_sgsd.sh, or chosen here.
TRAIN_BATCH_SIZE=16          # problems per step = per optimizer step (release: 1 x 4 accum x 4 GPUs)
GRAD_CLIP=0.1                # release: max_grad_norm 0.1
UPDATE_THINKING=true         # the skill writer thinks: the release's updater renders Qwen3's chat template
                             # without enable_thinking, whose default is on (docs/decisions.md)
MAX_PROMPT_LENGTH=2048       # the student prompt is the problem alone
TRAIN_TOKENS_PER_GPU=6144     # actor update: two full-length student sequences (2048 + 1024) per micro-batch
ROLLOUT_TP=1
ROLLOUT_GPU_MEMORY=0.5

verl_overrides
variant_overrides sgsd
sgsd_overrides
python3 -m recipe.sgsd.main_sgsd \
    algorithm.adv_estimator=sgsd \
    "${VERL_OVERRIDES[@]}" \
    "${SGSD_OVERRIDES[@]}" \
    "${VARIANT_OVERRIDES[@]}" \
    "$@"
