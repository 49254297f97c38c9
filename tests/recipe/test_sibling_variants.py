"""The sibling methods' variants (Skill-SD, SDAR, RLSD; recipe/sgsd/variants.py) in-process,
on the real tiny model: each variant's config as a CPU run composes it, the run's skills
(sgsd.sibling_skills.make_sibling_skills, as the trainer builds them), the teacher pass with
a plain forward of the model as its scorer, and the actor loss on the record as verl's FSDP
worker hands it over. Each must show its fingerprint: what its teacher sees, which skills it
chose, what its loss decides. The same variants run one step through verl's real trainer in
the `--all` tier (tests/recipe/test_variants_e2e.py)."""

from __future__ import annotations

import math

import pytest
import torch

from recipe.sgsd.loss import SGSDActorLoss
from recipe.sgsd.teacher_pass import TeacherPass, rlsd_token_advantages, rollout_loss_inputs
from recipe.sgsd.variants import VARIANTS
from sgsd.sd_objectives import GlobalBatch, sdar_loss, skill_sd_loss
from sgsd.sibling_skills import make_sibling_skills
from sgsd.skill_sources import TrajectorySummary, task_key
from sgsd.teacher_contexts import PRIVILEGED_SKILL_HEADER, SKILL_SD_HEADER
from tests.recipe.conftest import sgsd_config_of
from tests.tiny_policy import HFScorer, actor_loss, response_distribution, response_log_probs

SIBLINGS = sorted(n for n, v in VARIANTS.items() if v.script == "grpo" and v.estimator == "sgsd")
GROUP = ("actor_rollout_ref.rollout.n=2",)  # a GRPO group (RLSD refuses n = 1)


def _summaries(store, problems):
    """Two earlier attempts per problem: a success and a failure (what Skill-SD's writer keeps)."""
    for i, problem in enumerate(dict.fromkeys(problems)):
        for j, success in enumerate((True, False)):
            store.add(TrajectorySummary(name=f"sum_{i}_{j}", task=task_key(problem), success=success, step=0,
                                        success_analysis=f"attempt {j} of problem {i} set up the equation",
                                        mistake_analysis="none" if success else "dropped a sign",
                                        golden_workflow=f"isolate the unknown, then check (workflow {i}.{j})"),
                      problem)


class Outcome:
    def __init__(self, name, batch, policy, tokenizer, run_config, encoder):
        self.name = name
        self.config = run_config(*GROUP, variant=name)
        self.sgsd = cfg = sgsd_config_of(self.config)
        self.skills = make_sibling_skills(cfg, encoder=encoder)
        if cfg.skill_source == "summaries":
            _summaries(self.skills.store, batch.rollouts.problems)
        self.result = TeacherPass(cfg, tokenizer, None, self.skills)(batch.rollouts, HFScorer(policy))
        self.teacher_prompts = [tokenizer.decode(ids) for ids in self.result.plan.prompt_ids]
        self.inputs = rollout_loss_inputs(self.result.fields, batch.rollouts)
        self.loss_fn = SGSDActorLoss.from_config(cfg)
        self.loss = self.metrics = None
        if cfg.method != "rlsd":
            loss, metrics = actor_loss(policy, self.loss_fn, batch.prompts, batch.rollouts, self.result.fields)
            self.loss = loss.item()
            self.metrics = {k: (v.aggregate() if hasattr(v, "aggregate") else v) for k, v in metrics.items()}
            prefix = f"sgsd/{cfg.method}/"
            self.method_metrics = {k[len(prefix):]: v for k, v in self.metrics.items() if k.startswith(prefix)}

    @property
    def teachers(self) -> list[int]:
        return (self.result.fields.alpha > 0).sum(-1).tolist()

    @property
    def chosen(self) -> list[list[str]]:
        return [[s.name for s in skills] for skills in self.result.skills]


@pytest.fixture(scope="module")
def outcome(tiny_batch, policy, run_tokenizer, run_config, encoder):
    cache: dict[str, Outcome] = {}

    def get(name: str) -> Outcome:
        if name not in cache:
            cache[name] = Outcome(name, tiny_batch, policy, run_tokenizer, run_config, encoder)
        return cache[name]

    return get


def _grpo_backbone(o: Outcome, coef: float) -> bool:
    actor = o.config.actor_rollout_ref.actor
    return (actor.use_kl_loss and actor.kl_loss_coef == 0.01 and actor.kl_loss_type == "low_var_kl"
            and o.sgsd.distill_coef == coef and o.config.algorithm.adv_estimator == "sgsd")


def _sdar_prompts(o: Outcome) -> bool:
    return len(o.teacher_prompts) == 4 and all(t.startswith(PRIVILEGED_SKILL_HEADER + "\n") for t in o.teacher_prompts)


def _skill_sd(o: Outcome, coef: float = 0.001, teacher: str = "live") -> bool:
    return (_grpo_backbone(o, coef) and o.sgsd.teacher == teacher and o.teachers == [1] * 4
            and all(SKILL_SD_HEADER in t and "Golden workflow" in t for t in o.teacher_prompts)
            and all(len(c) == 1 for c in o.chosen))  # UCB, k = 1: the first unpulled summary


def _sdar(o: Outcome, d: Outcome, **sdar) -> bool:
    settings = o.sgsd.sdar
    return (_grpo_backbone(o, 0.01) and _sdar_prompts(o)
            and all(getattr(settings, k) == v for k, v in sdar.items())
            and o.method_metrics["gate_mean"] != pytest.approx(d.method_metrics["gate_mean"], rel=1e-6))


# (o, d: the default of its method) -> bool
FINGERPRINTS = {
    "skill_sd": lambda o, d: _skill_sd(o),
    "skill_sd_frozen": lambda o, d: _skill_sd(o, teacher="frozen"),
    "skill_sd_lambda_1e-2": lambda o, d: _skill_sd(o, 0.01),
    "skill_sd_lambda_5e-3": lambda o, d: _skill_sd(o, 0.005),
    "skill_sd_lambda_5e-4": lambda o, d: _skill_sd(o, 0.0005),
    # keyword retrieval: the general workflow for every problem, plus the topics its words name
    "sdar": lambda o, d: (_grpo_backbone(o, 0.01) and _sdar_prompts(o) and o.sgsd.sdar.beta == 5.0
                          and all("general_workflow" in c for c in o.chosen) and 0 < o.method_metrics["gate_mean"] < 1),
    "sdar_retrieval_keyword": lambda o, d: o.chosen == d.chosen and o.sgsd.skill_strategy == "keyword",
    "sdar_beta_1": lambda o, d: _sdar(o, d, beta=1.0),
    "sdar_beta_10": lambda o, d: _sdar(o, d, beta=10.0),
    "sdar_gate_entropy": lambda o, d: (_sdar(o, d, gate="entropy")
                                       and o.config.actor_rollout_ref.actor.calculate_entropy),
    "sdar_gate_softor": lambda o, d: (_sdar(o, d, gate="soft_or") and o.config.actor_rollout_ref.actor.calculate_entropy
                                      and o.method_metrics["gate_mean"] >= d.method_metrics["gate_mean"]),  # an OR
    "sdar_fkl": lambda o, d: (_grpo_backbone(o, 0.01) and o.result.fields.topk_ids[0].shape[-1] == 100
                              and o.loss != pytest.approx(d.loss, rel=1e-6)),
    "sdar_jsd": lambda o, d: (_grpo_backbone(o, 0.01) and o.result.fields.topk_ids[0].shape[-1] == 100
                              and o.loss != pytest.approx(d.loss, rel=1e-6)),
    "sdar_retrieval_full": lambda o, d: all(len(c) == len(o.skills.files) for c in o.chosen) and _sdar_prompts(o),
    "sdar_retrieval_random": lambda o, d: all(len(c) == 1 for c in o.chosen) and _sdar_prompts(o),
    "sdar_retrieval_ucb": lambda o, d: o.chosen == [[o.skills.files[0].name]] * 4 and _sdar_prompts(o),
    # beta 0: every gate is exactly one half, none "active"
    "grpo_opsd": lambda o, d: (o.method_metrics["gate_mean"] == 0.5 and o.method_metrics["gate_active_frac"] == 0.0
                               and _grpo_backbone(o, 0.01)),
    # the same ungated term alone: no policy loss whatever n, no KL, weight 1
    "sdar_opsd": lambda o, d: (o.method_metrics["gate_mean"] == 0.5 and not o.sgsd.hybrid(8)
                               and o.sgsd.hybrid(8) != d.sgsd.hybrid(8) and o.sgsd.distill_coef == 1.0
                               and not o.config.actor_rollout_ref.actor.use_kl_loss and _sdar_prompts(o)),
}
DEFAULT_OF = {"skill_sd": "skill_sd", "sdar": "sdar", "rlsd": "sdar"}
# In-process a frozen teacher scores with the live one's weights (the initial model); named
# retrieval's default: the same choice. Their runs differ in verl's trainer only.
SAME_LOSS = {"skill_sd", "sdar", "skill_sd_frozen", "sdar_retrieval_keyword"}


def test_every_sibling_variant_has_a_fingerprint():
    assert set(FINGERPRINTS) | {"rlsd"} == set(SIBLINGS)
    assert {VARIANTS[n].launcher for n in SIBLINGS} == {"grpo"}


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_sibling_variant_fingerprint(name, outcome, policy, tiny_batch):
    o = outcome(name)
    d = outcome(DEFAULT_OF[o.sgsd.method])
    assert FINGERPRINTS[name](o, d), (o.chosen, o.method_metrics, o.teacher_prompts[:1])
    assert math.isfinite(o.loss)
    # the actor's loss on the record is the library formula on the same tensors
    x = o.inputs
    mask = x.response_mask * (x.alpha[:, :1] > 0)
    with torch.no_grad():
        student = torch.nn.utils.rnn.pad_sequence(
            [response_log_probs(policy, p, r) for p, r in zip(tiny_batch.prompts, tiny_batch.rollouts.responses)],
            batch_first=True)
    batch = GlobalBatch(global_batch_size=4, batch_num_tokens=float(x.response_mask.sum()))
    if o.sgsd.method == "skill_sd":
        ref = skill_sd_loss(student, x.teacher[:, 0], x.student, mask, o.sgsd.skill_sd_config(), batch)
        assert o.method_metrics["rho_mean"] == pytest.approx(1.0, abs=1e-4)  # on-policy: pi_theta = pi_old
    else:  # the entropy and the top-k divergence from the student's full distributions, apart from verl's hooks
        ref = sdar_loss(student, x.teacher[:, 0], mask, o.sgsd.sdar_config(), batch,
                        **_full_distribution_inputs(o, policy, tiny_batch, x.response_mask.shape[1]))
    # the actor's total is the coefficient times the method's term (no hybrid part in-process)
    assert o.loss == pytest.approx(o.sgsd.distill_coef * o.method_metrics["loss"], rel=1e-5, abs=1e-12)
    if ref is not None:
        assert o.method_metrics["loss"] == pytest.approx(ref.loss.item(), rel=1e-4, abs=1e-7)
    if name in SAME_LOSS:
        assert o.loss == pytest.approx(d.loss, rel=1e-6)
    else:  # a loss of its own
        assert o.loss != pytest.approx(d.loss, rel=1e-6)


def _full_distribution_inputs(o: Outcome, policy, batch, width: int) -> dict:
    """SDAR's per-token inputs taken from the student's full ``[T, V]`` log-softmax: its entropy
    (entropy / soft-OR gates) and the top-k divergence at the teacher's own ids (fkl / jsd)."""
    from sgsd.objective import topk_forward_kl, topk_jsd

    config = o.sgsd.sdar_config()
    full = [response_distribution(policy, p, r) for p, r in zip(batch.prompts, batch.rollouts.responses)]

    def padded(rows):
        return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])

    out = {}
    if config.uses_entropy:
        out["entropy"] = padded([-(f.exp() * f).sum(-1) for f in full])
    if config.uses_distribution:
        rows = []
        for f, ids, teacher_lp in zip(full, o.result.fields.topk_ids, o.result.fields.topk_log_probs):
            student_lp = f.gather(-1, ids[:, 0].long())
            rows.append(topk_forward_kl(teacher_lp[:, 0], student_lp, config.divergence_clip)
                        if config.divergence == "forward_kl"
                        else topk_jsd(teacher_lp[:, 0], student_lp, config.jsd_beta, config.divergence_clip))
        out["divergence"] = padded(rows)
    return out


def test_ucb_learns_from_the_outcomes_it_observes(outcome, tiny_batch):
    o = outcome("sdar_retrieval_ucb")
    first = o.skills.files[0].name
    o.skills.observe(tiny_batch.rollouts.problems, o.result.skills, tiny_batch.rollouts.rewards.tolist())
    problem = tiny_batch.rollouts.problems[0]
    assert o.skills.strategy.pulls(task_key(problem), first) == tiny_batch.rollouts.problems.count(problem)
    # the next draw for that problem tries an arm it has not pulled yet
    assert o.skills.select([problem])[0][0].name != first


def test_rlsd_reweights_grpo_advantages_by_the_teachers_gap(outcome, tiny_batch):
    o = outcome("rlsd")
    assert o.sgsd.method == "rlsd" and not o.sgsd.distills and _sdar_prompts(o)
    rewards = tiny_batch.rollouts.rewards
    adv = [torch.full((len(r),), float(a)) for r, a in zip(tiny_batch.rollouts.responses, rewards - rewards.mean())]
    new, metrics = rlsd_token_advantages(o.result.fields, tiny_batch.rollouts, adv, 1, o.sgsd.rlsd_config())
    lam, eps = 0.5 * (1 - 1 / 100), 0.2
    assert metrics["sgsd/rlsd/lambda"] == pytest.approx(lam)
    for a, b in zip(adv, new):
        assert b.shape == a.shape and bool((torch.sign(b) == torch.sign(a)).all())
        assert bool((b.abs() <= (1 + lam * eps) * a.abs() + 1e-6).all())
        assert bool((b.abs() >= (1 - lam * eps) * a.abs() - 1e-6).all())
    assert any(not torch.allclose(a, b) for a, b in zip(adv, new))  # the teacher moved something
    # at the end of the decay the advantages are GRPO's own
    same, _ = rlsd_token_advantages(o.result.fields, tiny_batch.rollouts, adv, 100, o.sgsd.rlsd_config())
    assert all(torch.equal(a, b) for a, b in zip(adv, same))
