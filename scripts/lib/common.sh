# Sourced by scripts/run_*.sh, never run on its own: the environment every SGSD-verl GPU run
# shares, and the mapping from the run scripts' variables to verl 0.9.1 config keys. The
# values live in the run scripts; a variable a script forgot fails `set -u` by name.

SGSD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# SKILL_ENCODER, STUDENT_SKILLS_TOP_K: the retrieval these scripts share with eval.sh and prepare_data.py.
source "$SGSD_ROOT/scripts/lib/retrieval.sh"

# `python3 -m recipe.sgsd.main_sgsd` from any folder; Ray workers on this node inherit it (on
# other nodes of a multi-node run, install the project or set PYTHONPATH there too).
export PYTHONPATH="$SGSD_ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Faster model downloads: hf_transfer for huggingface_hub < 1.0 (the `gpu` extra's
# hf-transfer); huggingface_hub >= 1.0 ignores it and reads the Xet switch instead.
export HF_HUB_ENABLE_HF_TRANSFER=1
export HF_XET_HIGH_PERFORMANCE="${HF_XET_HIGH_PERFORMANCE:-1}"

# verl imports these modules in every process it starts (driver, trainer, FSDP, reward and
# agent-loop workers) and fails loudly on an import error; entry points would swallow it.
export VERL_USE_EXTERNAL_MODULES=recipe.sgsd.plugin

export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

# Metrics to the console and a JSONL file (verl's FileLogger: $VERL_FILE_LOGGER_ROOT, default
# ./<project>/<experiment>.jsonl); USE_WANDB=1 adds Weights & Biases.
if [[ "${USE_WANDB:-0}" == 1 ]]; then
    LOGGER='[console,file,wandb]'
else
    LOGGER='[console,file]'
fi

# VERL_OVERRIDES: the keys every run sets (SGSD and the GRPO baseline alike). bf16, FlashAttention 2,
# gradient checkpointing and LoRA on all linear layers are the paper's for every method (App. E.1).
verl_overrides() {
    VERL_OVERRIDES=(
        data.train_files="$TRAIN_FILE"
        data.val_files="$VAL_FILE"
        data.train_batch_size="$TRAIN_BATCH_SIZE"
        data.max_prompt_length="$MAX_PROMPT_LENGTH"
        data.max_response_length="$RESPONSE_LENGTH"
        data.filter_overlong_prompts=true
        actor_rollout_ref.model.path="$MODEL_PATH"
        actor_rollout_ref.model.lora_rank="$LORA_RANK"
        actor_rollout_ref.model.lora_alpha="$LORA_ALPHA"
        actor_rollout_ref.model.target_modules=all-linear
        actor_rollout_ref.model.use_remove_padding=true
        actor_rollout_ref.model.enable_gradient_checkpointing=true
        # `++`: override_config is an empty dict in verl's yaml. A later plain key=value wins.
        ++actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2
        actor_rollout_ref.actor.fsdp_config.dtype=bfloat16
        actor_rollout_ref.actor.optim.lr="$LR"
        # The release's optimiser (its trainer's defaults): linear decay to 0, no weight decay;
        # verl's are a constant rate and 0.01 (linear: recipe/sgsd/lr_schedule.py)
        actor_rollout_ref.actor.optim.lr_scheduler_type=linear
        actor_rollout_ref.actor.optim.min_lr_ratio=0.0
        actor_rollout_ref.actor.optim.weight_decay=0.0
        # The engine workers clip with optim.clip_grad; actor.grad_clip is the legacy key.
        actor_rollout_ref.actor.optim.clip_grad="$GRAD_CLIP"
        actor_rollout_ref.actor.ppo_mini_batch_size="$TRAIN_BATCH_SIZE"
        # verl's dynamic batch sizing for the actor update and every log-prob pass (old, ref, and
        # SGSD's teacher pass): micro-batches are cut by tokens, so any per-rank count works. Fixed
        # micro-batches must divide each rank's count (16 problems x 1 rollout on 8 GPUs: 2 each),
        # and verl asserts the actor and the rollout's log-prob pass agree on the mode.
        actor_rollout_ref.actor.use_dynamic_bsz=true
        actor_rollout_ref.actor.ppo_max_token_len_per_gpu="$TRAIN_TOKENS_PER_GPU"
        actor_rollout_ref.rollout.name=vllm
        actor_rollout_ref.rollout.dtype=bfloat16
        actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP"
        actor_rollout_ref.rollout.gpu_memory_utilization="$ROLLOUT_GPU_MEMORY"
        actor_rollout_ref.rollout.n="$ROLLOUTS"
        actor_rollout_ref.rollout.temperature="$TEMPERATURE"
        actor_rollout_ref.rollout.top_p="$TOP_P"
        actor_rollout_ref.rollout.top_k="$TOP_K"
        actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true
        actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu="$LOGPROB_TOKENS_PER_GPU"
        actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true
        actor_rollout_ref.ref.log_prob_max_token_len_per_gpu="$LOGPROB_TOKENS_PER_GPU"
        actor_rollout_ref.rollout.val_kwargs.do_sample=true
        actor_rollout_ref.rollout.val_kwargs.n="$VAL_SAMPLES"
        actor_rollout_ref.rollout.val_kwargs.temperature="$VAL_TEMPERATURE"
        actor_rollout_ref.rollout.val_kwargs.top_p="$VAL_TOP_P"
        actor_rollout_ref.rollout.val_kwargs.top_k="$VAL_TOP_K"
        trainer.logger="$LOGGER"
        trainer.project_name="$PROJECT_NAME"
        trainer.experiment_name="$EXPERIMENT_NAME"
        trainer.nnodes="$NNODES"
        trainer.n_gpus_per_node="$N_GPUS_PER_NODE"
        trainer.total_training_steps="$TOTAL_STEPS"
        trainer.save_freq="$SAVE_FREQ"
        trainer.test_freq="$TEST_FREQ"
    )
}

# SGSD_OVERRIDES: the `sgsd:` section (recipe/sgsd/config/sgsd_trainer.yaml documents each key).
# A variant with skills in the student prompt (OPSD+Skill) has one teacher that sees exactly the
# student's pairs: sgsd.top_k is then the K its data was prepared with (main_sgsd refuses another).
sgsd_overrides() {
    local top_k=$TEACHERS
    variant_info
    if [[ "$VARIANT_STUDENT_SKILLS" == 1 ]]; then
        top_k=$STUDENT_SKILLS_TOP_K
    fi
    SGSD_OVERRIDES=(
        sgsd.bank_path="$BANK_PATH"
        sgsd.encoder="$ENCODER"
        sgsd.encoder_device="$ENCODER_DEVICE"
        sgsd.top_k="$top_k"
        sgsd.teacher="$TEACHER"
        sgsd.student_thinking="$STUDENT_THINKING"
        sgsd.teacher_thinking="$TEACHER_THINKING"
        sgsd.tau="$TAU"
        sgsd.clip="$CLIP"
        sgsd.threshold="$THRESHOLD"
        sgsd.max_teacher_prompt_length="$TEACHER_PROMPT_LENGTH"
        sgsd.update.enable="$SKILL_UPDATE"
        "sgsd.update.writer='$SKILL_WRITER'"  # quoted for Hydra: a spec holds ':' and '#'
        sgsd.update.enable_thinking="$UPDATE_THINKING"
        sgsd.update.freq="$UPDATE_FREQ"
        sgsd.update.success_threshold="$UPDATE_SUCCESS"
        sgsd.update.max_new_items="$UPDATE_MAX_NEW"
        sgsd.update.capacity="$UPDATE_CAPACITY"
    )
}

# VARIANT_INFO: `python3 -m recipe.sgsd.variants show $VARIANT` (name=, estimator=, script=, student_skills=,
# then one Hydra override a line), asked once per script. An unknown name fails here, listing the
# known ones. VARIANT_STUDENT_SKILLS=1 when the variant trains with skills in the student prompt.
variant_info() {
    if [[ "${_VARIANT_INFO_OF:-}" != "$VARIANT" ]]; then
        VARIANT_INFO="$(python3 -m recipe.sgsd.variants show "$VARIANT")"
        VARIANT_STUDENT_SKILLS="$(sed -n 's/^student_skills=//p' <<<"$VARIANT_INFO")"
        VARIANT_ESTIMATOR="$(sed -n 's/^estimator=//p' <<<"$VARIANT_INFO")"
        _VARIANT_INFO_OF=$VARIANT
    fi
}

# TRAIN_FILE, unless the environment sets it: the training set $VARIANT needs, as
# scripts/prepare_data.py writes it (--student-skills BANK for the _skills file).
choose_train_file() {
    variant_info
    if [[ "$VARIANT_STUDENT_SKILLS" == 1 ]]; then
        TRAIN_FILE=${TRAIN_FILE:-$HOME/data/sgsd/math_train_skills.parquet}  # skills in the student prompt
    fi
    TRAIN_FILE=${TRAIN_FILE:-$HOME/data/sgsd/math_train.parquet}
}

# VARIANT_OVERRIDES: a named baseline or ablation (recipe/sgsd/variants.py is the list:
# `python3 -m recipe.sgsd.variants list`). $1 is the script family (sgsd | grpo) of the calling
# script; a variant of the other one is refused, naming the script to use.
variant_overrides() {
    local script
    variant_info
    script="$(sed -n 's/^script=//p' <<<"$VARIANT_INFO")"
    if [[ "$script" != "$1" ]]; then
        echo "VARIANT=$VARIANT is a $script run: launch it with scripts/run_${script}_qwen3_8b.sh" >&2
        return 2
    fi
    VARIANT_OVERRIDES=()
    local line
    while IFS= read -r line; do
        [[ -n "$line" ]] && VARIANT_OVERRIDES+=("$line")
    done < <(tail -n +5 <<<"$VARIANT_INFO")
    if [[ "$VARIANT_STUDENT_SKILLS" == 1 && ! -e "$TRAIN_FILE" && "${SGSD_DRY_RUN:-0}" != 1 ]]; then
        echo "VARIANT=$VARIANT trains with skills in the student prompt; write $TRAIN_FILE first:" >&2
        echo "  python3 scripts/prepare_data.py --dataset math_train --student-skills ${BANK_PATH:-BANK} --output $TRAIN_FILE" >&2
        echo "  (its defaults are these scripts' encoder $SKILL_ENCODER and K $STUDENT_SKILLS_TOP_K;" >&2
        echo "  an OPSD+Skill run refuses data prepared with another bank, encoder or K)" >&2
        return 2
    fi
}
