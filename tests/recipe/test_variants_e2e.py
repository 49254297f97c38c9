"""The `--all` tier (`bash scripts/test.sh --all`): every baseline and ablation runs one step
through verl 0.9.1's real trainer on CPU: the same recipe, entry point and launcher, only
the variant's overrides (recipe/sgsd/variants.py) differ. Each run must finish, log finite
losses, and show the variant's fingerprint in what it logged. The default tier checks the
same fingerprints in-process (tests/recipe/test_variants.py); what only these runs add is
each variant's wiring through verl's workers."""

from __future__ import annotations

import math

import pytest

from recipe.sgsd.cpu.run import CPURun
from recipe.sgsd.variants import VARIANTS

pytestmark = [pytest.mark.slow, pytest.mark.sweep]

# What each variant must visibly change in the step it logs.
FINGERPRINTS = {
    "sgsd": lambda m: m["sgsd/teachers_per_problem_retrieved"] == 4,
    "single_teacher": lambda m: m["sgsd/teachers_per_problem_retrieved"] == 1,
    "opsd_skill": lambda m: m["sgsd/teachers_per_problem_retrieved"] == 1,
    "no_threshold": lambda m: m["sgsd/neutral_frac"] == 0.0,  # eps_a = 0: only an exact 0 is neutral
    "no_robust": lambda m: m["sgsd/neutral_frac"] == 0.0 and m["sgsd/mask_keep_frac"] == 1.0,
    "no_token_mask": lambda m: m["sgsd/mask_keep_frac"] == 1.0,
    # the teacher's top-100 distribution reached the pass: the mass it holds, of a real softmax
    "top100_support": lambda m: 0.0 < m["sgsd/teacher_topk_mass"] <= 1.0 + 1e-5,
    "fkl": lambda m: 0.0 < m["sgsd/teacher_topk_mass"] <= 1.0 + 1e-5,
    "jsd": lambda m: 0.0 < m["sgsd/teacher_topk_mass"] <= 1.0 + 1e-5,
    # the moving teachers' own weights: updated after the step (ema), or not yet (periodic, every 50)
    "ema_teacher": lambda m: (m["sgsd/teacher/update_weight"] == pytest.approx(1 - 0.999)
                              and m["sgsd/teacher/updates"] == 1),
    "periodic_teacher": lambda m: m["sgsd/teacher/update_weight"] == 0.0 and "sgsd/teacher/updates" not in m,
}
FINGERPRINTS["opsd_rkl"] = lambda m: m["sgsd/teachers_per_problem_retrieved"] == 1 and "sgsd/teacher_topk_mass" not in m
FINGERPRINTS["opsd"] = lambda m: (m["sgsd/teachers_per_problem_retrieved"] == 1
                                  and 0.0 < m["sgsd/teacher_topk_mass"] <= 1.0 + 1e-5 and m["sgsd/mask_keep_frac"] == 1.0)
ANSWER = "The verified final answer is:"
GUIDANCE = "### General Principles"
# (answer in every teacher prompt, skills in every teacher prompt, skills in every student prompt)
PROMPTS = {"opsd": (True, False, False), "opsd_skill": (True, True, True), "answer_pi": (True, True, False),
           "sgsd": (False, True, False)}


def _check_prompts(run: CPURun, name: str) -> None:
    import torch
    from transformers import AutoTokenizer

    answer, skills, student_skills = PROMPTS[name]
    dump = torch.load(run.workdir / "dump" / "teacher_pass_step0001.pt")
    tok = AutoTokenizer.from_pretrained(run.model_dir)
    teachers = [tok.decode(ids) for ids in dump["prompt_ids"]]
    students = [tok.decode(ids) for ids in dump["student_prompts"]]
    assert teachers and all((ANSWER in t) == answer and (GUIDANCE in t) == skills for t in teachers), teachers[0]
    assert all((GUIDANCE in s) == student_skills for s in students), students[0]


# The sibling methods on the GRPO backbone (a group of 2 here): the SGSD trainer's one-teacher path.
SIBLING_FINGERPRINTS = {
    # one step: no summary exists yet (no teacher, a zero L_SDL); the 2 x 2 rollouts went to the writer
    "skill_sd": lambda m: (m["sgsd/skills/no_skill_frac"] == 1.0 and m["sgsd/skill_sd/loss"] == 0.0
                           and m["sgsd/skills/summaries_submitted"] == 4),
    "sdar": lambda m: m["sgsd/teachers_per_problem_retrieved"] == 1 and 0 < m["sgsd/sdar/gate_mean"] < 1,
    "grpo_opsd": lambda m: m["sgsd/sdar/gate_mean"] == pytest.approx(0.5),
    "sdar_opsd": lambda m: m["sgsd/sdar/gate_mean"] == pytest.approx(0.5) and math.isfinite(m["sgsd/loss"]),
    "sdar_fkl": lambda m: 0.0 < m["sgsd/teacher_topk_mass"] <= 1.0 + 1e-5,
    "sdar_jsd": lambda m: 0.0 < m["sgsd/teacher_topk_mass"] <= 1.0 + 1e-5,
    "sdar_retrieval_full": lambda m: m["sgsd/skills/selected_per_rollout"] == m["sgsd/skills/files"],
    "sdar_retrieval_random": lambda m: m["sgsd/skills/selected_per_rollout"] == 1,
    "sdar_retrieval_ucb": lambda m: m["sgsd/skills/selected_per_rollout"] == 1,
    "rlsd": lambda m: (m["sgsd/rlsd/lambda"] == pytest.approx(0.495) and "sgsd/loss" not in m
                       and 0.9 <= m["sgsd/rlsd/weight_mean"] <= 1.1),
}


def _sibling(name: str) -> bool:
    return VARIANTS[name].launcher == "grpo" and VARIANTS[name].estimator == "sgsd"


def _check_sibling(name: str, m: dict) -> None:
    method = next(o.split("=", 1)[1] for o in VARIANTS[name].overrides if o.startswith("sgsd.method="))
    if "sgsd.policy_gradient=false" in VARIANTS[name].overrides:  # the distillation term alone
        assert "actor/pg_loss" not in m and "actor/kl_loss" not in m
    else:
        assert math.isfinite(m["actor/kl_loss"]) and m["actor/kl_coef"] == 0.01  # GRPO's KL to the reference
    if method != "rlsd":
        assert math.isfinite(m[f"sgsd/{method}/loss"])
    check = SIBLING_FINGERPRINTS.get(name, SIBLING_FINGERPRINTS.get(method))
    if check is not None:
        assert check(m), {k: v for k, v in m.items() if k.startswith("sgsd/")}


def test_skill_sd_distils_from_summaries_its_writer_wrote_off_the_step(tmp_path, run_model_dir, run_data_dir):
    """Skill-SD, two steps on the same two problems: step 1 has no summary yet (no teacher, a
    zero L_SDL); its rollouts go to an OpenAI-compatible writer on the summarizer's thread; step 2's
    teachers see those summaries, chosen by UCB, and the checkpoint keeps store and bandit."""
    import json

    from recipe.sgsd.cpu.backend import gpu_present
    from tests.skill_writer import WriterServer

    if gpu_present():
        pytest.skip("the CPU backend stays off on GPU machines")
    with WriterServer() as server:
        run = CPURun(tmp_path, steps=2, batch_size=2, response_length=16, variant="skill_sd", rollout_n=2,
                     train_rows=2, model_dir=run_model_dir,
                     extra=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "trainer.save_freq=2",
                            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
                            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
                            f'sgsd.update.writer="openai:{server.base_url}#skill-writer"'])
        done = run.run(capture=True, timeout=900)
        assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-4000:])
        requests = len(server.requests)
    by_step = {s["step"]: s["data"] for s in run.metrics()}
    first, second = by_step[1], by_step[2]
    assert first["sgsd/skills/no_skill_frac"] == 1.0 and first["sgsd/skill_sd/loss"] == 0.0
    assert first["sgsd/skills/summaries_submitted"] == 4 and requests >= 4
    assert second["sgsd/skills/no_skill_frac"] == 0.0 and second["sgsd/teachers_per_problem_retrieved"] == 1
    assert second["sgsd/skill_sd/loss"] != 0.0 and math.isfinite(second["sgsd/skill_sd/rho_mean"])
    saved = run.checkpoint_dir / "global_step_2" / "sgsd" / "skills"
    store = json.loads((saved / "summaries.json").read_text())
    assert sum(len(t["summaries"]) for t in store["tasks"]) == 8  # 2 problems x 2 rollouts x 2 steps
    arms = json.loads((saved / "skill_strategy.json").read_text())
    assert arms["strategy"] == "ucb" and sum(v[0] for t in arms["state"]["arms"].values() for v in t.values()) == 4


@pytest.mark.parametrize("name", [n for n in VARIANTS if n not in ("no_all", "skill_sd")])  # no_all = no_robust
def test_variant_runs_one_step_through_the_real_trainer(tmp_path, name, run_model_dir, run_data_dir):
    from recipe.sgsd.cpu.backend import gpu_present

    if gpu_present():
        pytest.skip("the CPU backend stays off on GPU machines")
    variant = VARIANTS[name]
    run = CPURun(tmp_path, steps=1, batch_size=2, response_length=16, variant=name, model_dir=run_model_dir,
                 data_dir=run_data_dir,
                 rollout_n=2 if variant.launcher == "grpo" else 1,
                 extra=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "trainer.save_freq=-1",
                        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
                        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2"],
                 env={"SGSD_DEBUG_DUMP_DIR": str(tmp_path / "dump")} if name in PROMPTS else {})
    done = run.run(capture=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-4000:])
    steps = run.metrics()
    assert [s["step"] for s in steps] == [1]
    m = steps[0]["data"]
    assert math.isfinite(m["actor/grad_norm"])
    if variant.estimator == "grpo":
        assert not any(k.startswith("sgsd/") for k in m)  # verl's own GRPO, untouched
        if variant.student_skills:  # the rollouts were sampled from prompts that carry skills
            import pyarrow.parquet as pq

            prompts = pq.read_table(run.data_dir / "train_skills.parquet").column("prompt").to_pylist()
            assert all(GUIDANCE in p[0]["content"] for p in prompts)
        return
    if _sibling(name):
        _check_sibling(name, m)
        return
    assert math.isfinite(m["sgsd/loss"])
    assert abs(sum(m[f"sgsd/{c}_frac"] for c in ("helpful", "warning", "over_suppressive", "misleading",
                                                  "neutral")) - 1.0) < 1e-6
    check = FINGERPRINTS.get(name)
    if check is not None:
        assert check(m), {k: v for k, v in m.items() if k.startswith("sgsd/")}
    if name in PROMPTS:
        _check_prompts(run, name)
