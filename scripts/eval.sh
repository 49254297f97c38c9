#!/usr/bin/env bash
# Evaluate a model with the paper's protocol (Sec. 4.1, App. E.1): avg@12 on AIME24, AIME25 and
# HMMT25, temperature 1.0, top-p 0.95, no top-k, 38912 new tokens, thinking on; vLLM on a GPU,
# transformers otherwise. Resumable: rerun the same command after a crash, finished samples stay.
#
#   bash scripts/eval.sh                                                  # Qwen3-8B, the Base row
#   MODEL_PATH=Qwen/Qwen3-1.7B bash scripts/eval.sh
#   SKILLS=qwen3_1.7b MODEL_PATH=Qwen/Qwen3-1.7B bash scripts/eval.sh     # the Base+Skill row (Qwen3-Embedding)
#   ENCODER=all-MiniLM-L6-v2 SKILLS=qwen3_1.7b bash scripts/eval.sh     # another retrieval encoder
#   CHECKPOINT=checkpoints/sgsd/sgsd_qwen3_8b/global_step_200/actor bash scripts/eval.sh   # a verl run
#   LORA_PATH=adapters/sgsd_qwen3_8b bash scripts/eval.sh                # base model + LoRA adapter
#   BACKEND_OPTIONS='tensor_parallel_size=2' bash scripts/eval.sh --limit 5   # extra flags: `sgsd eval`
#   then: python3 -m sgsd eval compare evals/qwen3-8b evals/sgsd_qwen3_8b_global_step_200 \
#             --name Base --name SGSD -o evals/table.md
set -xeuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/lib/retrieval.sh"      # SKILL_ENCODER: the GPU training scripts' encoder

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-8B}       # a hub id or a Hugging Face model folder
CHECKPOINT=${CHECKPOINT:-}                     # a verl FSDP checkpoint (global_step_N/actor): replaces MODEL_PATH
LORA_PATH=${LORA_PATH:-}                       # a peft adapter merged into MODEL_PATH
SKILLS=${SKILLS:-}                             # Base+Skill: a bank path or shipped name (qwen3_1.7b, qwen3_4b)
ENCODER=${ENCODER:-$SKILL_ENCODER}             # Base+Skill's retrieval encoder, as SGSD's teachers retrieve
DATASETS=${DATASETS:-aime24,aime25,hmmt25}     # also amc2023, math500, or JSONL/parquet files
BACKEND=${BACKEND:-auto}                       # auto | vllm | transformers
BACKEND_OPTIONS=${BACKEND_OPTIONS:-}           # client arguments, KEY=VALUE&KEY=VALUE

# The paper's evaluation protocol (App. E.1).
SAMPLES=12
TEMPERATURE=1.0
TOP_P=0.95
TOP_K=-1
MAX_NEW_TOKENS=38912

if [[ -n "$CHECKPOINT" ]]; then
    SOURCE=(--verl-checkpoint "$CHECKPOINT")
    step_dir="${CHECKPOINT%/}"
    step_dir="${step_dir%/actor}"
    NAME=${NAME:-$(basename "$(dirname "$step_dir")")_$(basename "$step_dir")}
else
    SOURCE=(--model "$MODEL_PATH")
    NAME=${NAME:-$(basename "$MODEL_PATH" | tr 'A-Z' 'a-z')}
    if [[ -n "$LORA_PATH" ]]; then
        SOURCE+=(--lora "$LORA_PATH")
        NAME="${NAME}_$(basename "${LORA_PATH%/}")"
    fi
fi
SKILL_ARGS=()
if [[ -n "$SKILLS" ]]; then
    SKILL_ARGS=(--skills "$SKILLS" --encoder "$ENCODER")  # K: sgsd eval's 8, the release's SKILLS_TOP_K too
    NAME="${NAME}_skill"
fi
OUT_DIR=${OUT_DIR:-$ROOT/evals/$NAME}

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

python3 -m sgsd eval "${SOURCE[@]}" "${SKILL_ARGS[@]}" --datasets "$DATASETS" -o "$OUT_DIR" \
    --samples "$SAMPLES" --temperature "$TEMPERATURE" --top-p "$TOP_P" --top-k "$TOP_K" \
    --max-new-tokens "$MAX_NEW_TOKENS" --thinking --backend "$BACKEND" --backend-options "$BACKEND_OPTIONS" "$@"
