#!/usr/bin/env bash
# A cold-start skill bank for a model (paper Alg. 2 + Alg. 3) with vLLM, as the paper builds
# one per model (Tab. 12): sample N training problems, one solution each, skills from the
# successes and mistakes from the failures, merged hierarchically. Resumable: rerun the same
# command after a crash and finished generations/extractions are not redone.
#
#   bash scripts/build_bank.sh                                     # Qwen3-8B on the shipped MATH subset
#   MODEL_PATH=Qwen/Qwen3-4B OUT_DIR=banks/qwen3_4b bash scripts/build_bank.sh -n 512
#   WRITER='openai:http://host:8000/v1#Qwen/Qwen3-8B' bash scripts/build_bank.sh   # a served model instead
#   then: BANK_PATH=banks/qwen3_8b/bank.json bash scripts/run_sgsd_qwen3_8b.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-8B}
WRITER=${WRITER:-vllm:$MODEL_PATH}            # any `sgsd bank build --model` spec
DATA=${DATA:-math_train}                       # math_train, gsm8k, or a JSONL/parquet of problem/answer
OUT_DIR=${OUT_DIR:-$ROOT/banks/$(basename "$MODEL_PATH" | tr 'A-Z' 'a-z')}
NUM_PROBLEMS=${NUM_PROBLEMS:-256}              # Alg. 2's N
SEED=${SEED:-0}

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_XET_HIGH_PERFORMANCE="${HF_XET_HIGH_PERFORMANCE:-1}"

python3 -m sgsd bank build --model "$WRITER" --data "$DATA" -o "$OUT_DIR" -n "$NUM_PROBLEMS" --seed "$SEED" "$@"
