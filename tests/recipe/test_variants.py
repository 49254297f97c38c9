"""Every baseline and ablation (recipe/sgsd/variants.py) in-process, on the real tiny model.

Each variant's config is what a CPU run of it composes (recipe yaml, verl's defaults, the
run's overrides, the variant's); the teacher pass runs on the same four sampled rollouts
with a plain forward of the model as its scorer, and the actor's loss is computed on the
record exactly as verl's FSDP worker would hand it over. Each variant must show its
fingerprint there: the teachers it scores, what their prompts say, what its objective
decides, and a loss of its own. The same variants also run one step through verl's real
trainer in the `--all` tier (tests/recipe/test_variants_e2e.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from recipe.sgsd.loss import SGSDActorLoss
from recipe.sgsd.teacher_pass import rollout_loss_inputs
from recipe.sgsd.variants import VARIANTS
from sgsd.objective import sampled_rkl_loss, sgsd_objective
from tests.recipe.conftest import sgsd_config_of
from tests.tiny_policy import HFScorer, actor_loss, actor_micro_batch, full_distribution_objective, logits_hook

# The tiny model's teachers all sit near a_k = -2.5 on these rollouts: a neutral zone this
# wide holds some of them, so the threshold and the clip decide something here (they act
# only through the polarity), for the default and for every variant alike.
BASE = ("sgsd.threshold=2.5",)
ANSWER = "The verified final answer is:"
GUIDANCE = "### General Principles"


class Outcome:
    """One variant's pass on the shared rollouts: what the actor would see."""

    def __init__(self, name, batch, policy, tokenizer, run_config, make_teacher_pass):
        self.config = run_config(*BASE, variant=name)
        self.sgsd = sgsd_config_of(self.config)
        self.result = make_teacher_pass(self.config)(batch.rollouts, HFScorer(policy))
        self.teacher_prompts = [tokenizer.decode(ids) for ids in self.result.plan.prompt_ids]
        self.inputs = rollout_loss_inputs(self.result.fields, batch.rollouts)
        x = self.inputs
        loss_fn = SGSDActorLoss(actor_config=None, objective=self.sgsd.objective_config())
        with torch.no_grad():
            divergence = gap = None
            if loss_fn.objective.uses_distribution:  # what the actor's logits hook hands the objective
                data = actor_micro_batch(batch.prompts, batch.rollouts, self.result.fields)
                hooked = logits_hook(policy, loss_fn, data)
                divergence, gap = loss_fn.distribution_inputs(hooked, data, x.teacher.shape[1], x.student)
            self.objective = sgsd_objective(x.student, x.teacher, x.token_mask, x.alpha, x.outcome_sign,
                                            self.sgsd.objective_config(), response_mask=x.response_mask,
                                            divergence=divergence, support_gap=gap)
            loss, _ = actor_loss(policy, loss_fn, batch.prompts, batch.rollouts, self.result.fields)
        self.loss = loss.item()
        self.metrics = self.objective.metrics

    @property
    def teachers(self) -> list[int]:
        return (self.result.fields.alpha > 0).sum(-1).tolist()

    def prompts_say(self, answer: bool, skills: bool) -> bool:
        return bool(self.teacher_prompts) and all(
            (ANSWER in t) == answer and (GUIDANCE in t) == skills for t in self.teacher_prompts)


@pytest.fixture(scope="module")
def outcome(tiny_batch, policy, run_tokenizer, run_config, make_teacher_pass):
    cache: dict[str, Outcome] = {}

    def get(name: str) -> Outcome:
        if name not in cache:
            cache[name] = Outcome(name, tiny_batch, policy, run_tokenizer, run_config, make_teacher_pass)
        return cache[name]

    return get


def _full_distribution(o: Outcome, policy, batch) -> bool:
    """The variant's token losses are its divergence on the teacher's top-k, computed here from
    the full distributions of both models."""
    with torch.no_grad():
        full = full_distribution_objective(policy, batch.prompts, batch.rollouts, o.result, o.sgsd.objective_config(),
                                           o.sgsd.teacher_topk)
    return (o.sgsd.teacher_topk == 100 and torch.allclose(o.objective.token_loss_mean, full.token_loss_mean, atol=1e-5)
            and torch.equal(o.objective.polarity, full.polarity))


def _frozen_with_a_reference_model(o: Outcome) -> bool:
    actor = o.config.actor_rollout_ref.actor
    return o.sgsd.teacher == "frozen" and actor.use_kl_loss and actor.kl_loss_coef == 0.0


def _moving_teacher(o: Outcome, kind: str) -> bool:
    """ema / periodic: the teacher's weights in the reference model (a zero-weight KL builds it),
    on FSDP2 (the shard-wise update), with the release's decay and period."""
    actor = o.config.actor_rollout_ref.actor
    return (o.sgsd.teacher == kind and actor.use_kl_loss and actor.kl_loss_coef == 0.0 and actor.strategy == "fsdp2"
            and (o.sgsd.teacher_ema_decay, o.sgsd.teacher_period) == (0.999, 50))


def _rkl(o: Outcome) -> bool:
    x = o.inputs
    delta = (x.teacher - x.student[:, None]) * x.token_mask[:, None]
    by_hand = (sampled_rkl_loss(delta) * x.token_mask[:, None]).sum(-1) / (x.token_mask.sum(-1)[:, None] + 1e-6)
    return torch.allclose(o.objective.token_loss_mean, by_hand, atol=1e-5)


# What each SGSD-estimator variant must visibly change, given itself and the default run.
# (o, d, policy, batch) -> bool; ``full`` variants also match the full-distribution objective.
FINGERPRINTS = {
    "sgsd": lambda o, d: o.teachers == [4] * 4 and o.prompts_say(answer=False, skills=True),
    "single_teacher": lambda o, d: o.teachers == [1] * 4 and o.prompts_say(answer=False, skills=True),
    # the release's OPSD: clipped forward KL on every response token, scored at temperature 1.1
    "opsd": lambda o, d: (o.teachers == [1] * 4 and o.prompts_say(answer=True, skills=False)
                          and torch.equal(o.objective.polarity, (o.inputs.alpha > 0).float())
                          and o.metrics["mask_keep_frac"] == 1.0 and o.sgsd.logprob_temperature == 1.1
                          and o.sgsd.divergence_clip == 0.05 and _frozen_with_a_reference_model(o)),
    "opsd_rkl": lambda o, d: (o.teachers == [1] * 4 and o.prompts_say(answer=True, skills=False)
                              and torch.equal(o.objective.polarity, (o.inputs.alpha > 0).float()) and _rkl(o)
                              and _frozen_with_a_reference_model(o)),
    "opsd_skill": lambda o, d: (o.teachers == [1] * 4 and o.prompts_say(answer=True, skills=True)
                                and _frozen_with_a_reference_model(o)),
    "fkl": lambda o, d: o.teachers == [4] * 4 and torch.equal(o.objective.polarity, d.objective.polarity),
    "jsd": lambda o, d: (o.teachers == [4] * 4 and torch.equal(o.objective.polarity, d.objective.polarity)
                         and bool((o.objective.token_loss_mean <= math.log(2) + 1e-6).all())),
    # polarity from the local gap: a decision of its own
    "top100_support": lambda o, d: (o.teachers == [4] * 4 and o.result.fields.topk_ids[0].shape[-1] == 100
                                    and not torch.equal(o.objective.support, d.objective.support)),
    "answer_pi": lambda o, d: o.teachers == [4] * 4 and o.prompts_say(answer=True, skills=True),
    "no_threshold": lambda o, d: o.metrics["neutral_frac"] == 0.0 and d.metrics["neutral_frac"] > 0,
    "no_robust": lambda o, d: (o.metrics["neutral_frac"] == 0.0 < d.metrics["neutral_frac"]
                               and o.metrics["mask_keep_frac"] == 1.0 > d.metrics["mask_keep_frac"]),
    "no_token_mask": lambda o, d: o.metrics["mask_keep_frac"] == 1.0 and d.metrics["mask_keep_frac"] < 1.0,
    # unclipped gaps move the support wherever some |Delta| exceeds c = 3, and teachers out of the zone
    "no_clip": lambda o, d: (d.metrics["clipped_frac"] > 0 and o.result.support.abs().sum() > d.result.support.abs().sum()
                             and o.metrics["neutral_frac"] < d.metrics["neutral_frac"]),
    "no_polarity": lambda o, d: (torch.equal(o.objective.polarity, (o.inputs.alpha > 0).float())
                                 and (d.objective.polarity < 0).any()),
    "rkl": lambda o, d: _rkl(o),
    "frozen_teacher": lambda o, d: _frozen_with_a_reference_model(o),
    "ema_teacher": lambda o, d: _moving_teacher(o, "ema"),
    "periodic_teacher": lambda o, d: _moving_teacher(o, "periodic"),
}
FINGERPRINTS["no_all"] = FINGERPRINTS["no_robust"]
# In-process the frozen, EMA and periodic teachers score with the same weights as the live one
# (the initial model): their runs differ in which weights score after step 1, which only verl's
# trainer shows (tests/recipe/test_moving_teacher_e2e.py).
SAME_LOSS_AS_SGSD = {"sgsd", "frozen_teacher", "ema_teacher", "periodic_teacher"}


def test_every_variant_has_a_fingerprint():
    sgsd_variants = {n for n, v in VARIANTS.items() if v.estimator == "sgsd" and v.launcher == "sgsd"}
    assert set(FINGERPRINTS) == sgsd_variants  # the sibling methods': tests/recipe/test_sibling_variants.py
    assert {n for n, v in VARIANTS.items() if v.estimator == "grpo"} == {"grpo", "grpo_skill"}


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_variant_fingerprint_in_the_teacher_pass_and_the_loss(name, outcome, policy, tiny_batch):
    o, default = outcome(name), outcome("sgsd")
    assert FINGERPRINTS[name](o, default), {k: round(v, 4) for k, v in o.metrics.items()}
    if o.sgsd.objective_config().uses_distribution:
        assert _full_distribution(o, policy, tiny_batch), name
    # the loss the actor computes on the record is the variant's objective...
    assert math.isfinite(o.loss) and o.loss == pytest.approx(o.objective.loss.mean().item(), rel=1e-4)
    # ...and a loss of its own
    if name not in SAME_LOSS_AS_SGSD:
        assert o.loss != pytest.approx(default.loss, rel=1e-6), name
    else:
        assert o.loss == pytest.approx(default.loss, rel=1e-6)


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if v.student_skills])
def test_student_skill_variants_train_on_prompts_that_carry_the_pairs(name, run_config, tiny_batch, encoder,
                                                                      shipped_bank):
    """Their data: the student prompt carries the retrieved pairs, the row's problem (what
    teachers and the verifier see) stays plain."""
    from sgsd.datasets import Problem
    from sgsd.retrieval import SkillRetriever
    from sgsd.verl_data import problem_text, retrieve_student_guidance, to_verl_rows

    config = run_config(variant=name)
    assert config.data.train_files.endswith("train_skills.parquet")
    problems = [Problem(problem=p, answer=a) for p, a in zip(tiny_batch.rollouts.problems, tiny_batch.rollouts.answers)]
    retriever = SkillRetriever(encoder, shipped_bank, top_k=4)
    rows = to_verl_rows(problems, "math", "train", student_guidance=retrieve_student_guidance(problems, retriever))
    assert all(GUIDANCE in r["prompt"][0]["content"] for r in rows)
    assert [problem_text(r["extra_info"], r["prompt"]) for r in rows] == tiny_batch.rollouts.problems


@pytest.mark.parametrize("name", ["grpo", "grpo_skill"])
def test_grpo_variants_are_verls_own_trainer(name, run_config):
    config = run_config(variant=name)
    assert config.algorithm.adv_estimator == "grpo" and config.trainer.v1.trainer_mode == "sgsd_sync"
    assert config.reward.reward_manager.name == "naive"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_no_variant_sets_a_key_twice(name):
    """A key given twice would leave the first value's description untrue (Hydra keeps the last)."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in VARIANTS[name].overrides]
    assert len(keys) == len(set(keys)), keys
