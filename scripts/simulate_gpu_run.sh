#!/usr/bin/env bash
# One training step of a GPU launch script's own config on CPU ranks standing in for its GPUs
# (default 2): batch and mini-batch sizes scaled so every per-rank count is the GPU run's, the
# tiny local model, the hf rollout and CPU attention in place of Qwen3, vLLM and flash-attention,
# everything else (micro-batches, token budgets, n, top_k, teacher, LoRA, bank updates,
# validation) from the script. It prints what it scaled and swapped (recipe/sgsd/cpu/simulate.py).
#
#   bash scripts/simulate_gpu_run.sh scripts/run_sgsd_qwen3_8b.sh [hydra overrides for the script]
#   VARIANT=frozen_teacher bash scripts/simulate_gpu_run.sh scripts/run_sgsd_qwen3_8b.sh
#   SIMULATE_ARGS="--ranks 4 --workdir outputs/sim8b" bash scripts/simulate_gpu_run.sh scripts/run_grpo_qwen3_8b.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 1 ]]; then
    echo "usage: bash scripts/simulate_gpu_run.sh SCRIPT [hydra overrides]   (SIMULATE_ARGS: --ranks, --workdir, ...)" >&2
    exit 2
fi
source "$ROOT/scripts/setup_env.sh" test
script="$1"
shift
# shellcheck disable=SC2086  # SIMULATE_ARGS is a list of options
exec "$SGSD_PY" -m recipe.sgsd.cpu.simulate ${SIMULATE_ARGS:-} "$script" "$@"
