# The skill retrieval of the GPU path, in one place: sourced by scripts/lib/common.sh (every GPU
# training script) and scripts/eval.sh, and read by scripts/prepare_data.py for its defaults, so
# SGSD's teachers, the Base+Skill prompts and the GRPO+Skill / OPSD+Skill training data retrieve
# with one encoder. Plain NAME=value lines (no quotes, no expansion): prepare_data.py parses them.
# The library's own default, for the CPU demo and the tests, stays the packaged all-MiniLM-L6-v2.

# Paper Sec. 4.1 and Tab. 12; the release passes --skills_embedding_model_path
# Qwen/Qwen3-Embedding-0.6B to every script (SGSD, GRPO+Skill, OPSD+Skill, Base+Skill).
SKILL_ENCODER=Qwen/Qwen3-Embedding-0.6B

# Skill-mistake pairs in the STUDENT prompt of the GRPO+Skill / OPSD+Skill training data (and so
# the pairs OPSD+Skill's teacher sees): the release's run_grpo_skill.sh and run_opsd_skill.sh pass
# --skills_top_k 3; SGSD's teachers and Base+Skill use 8. The paper gives no K for these two
# baselines (docs/decisions.md).
STUDENT_SKILLS_TOP_K=3
