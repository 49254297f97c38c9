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

# The release's cold start (skill/generate_math_memories.py, generate_math_skills.py,
# merge_math_skills.py): every prompt through Qwen3's chat template without enable_thinking, i.e.
# thinking on; the solutions sampled as the model is evaluated (T=1.0, top-p 0.95, 38912 tokens),
# extraction and merge replies with 4096 tokens each (docs/decisions.md).
SOLUTION_TOKENS=38912
WRITER_TOKENS=4096

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_XET_HIGH_PERFORMANCE="${HF_XET_HIGH_PERFORMANCE:-1}"

python3 -m sgsd bank build --model "$WRITER" --data "$DATA" -o "$OUT_DIR" -n "$NUM_PROBLEMS" --seed "$SEED" \
    --thinking --max-new-tokens "$SOLUTION_TOKENS" \
    --writer-thinking --extract-max-new-tokens "$WRITER_TOKENS" --merge-max-new-tokens "$WRITER_TOKENS" "$@"
