"""Baselines and ablations as configuration: one name -> Hydra overrides (paper Sec. 4, App. E).

The launch scripts take ``VARIANT=<name>`` (``scripts/lib/common.sh`` asks this module for
the overrides), the CPU runs and tests take ``CPURun(variant=...)``: every method of the
paper's tables runs from the SAME recipe, entry point and scripts, never a copied script.

    python3 -m recipe.sgsd.variants list                 # names, scripts, papers, what they change
    python3 -m recipe.sgsd.variants overrides opsd       # one override per line
    python3 -m recipe.sgsd.variants show opsd            # estimator, script, data needs, overrides

A variant with ``student_skills`` trains on data whose STUDENT prompt carries the retrieved
skills (``scripts/prepare_data.py --student-skills BANK``); evaluation stays plain.

No verl import here: the shell scripts call this before anything heavy loads.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

__all__ = ["Variant", "VARIANTS", "get_variant"]


@dataclass(frozen=True)
class Variant:
    name: str
    paper: str  # where the paper reports it
    description: str
    overrides: tuple[str, ...] = ()
    estimator: str = "sgsd"  # algorithm.adv_estimator
    student_skills: bool = False  # train on data with skills in the student prompt
    script: str = ""  # which scripts/run_<script>_*.sh launches it (empty: the estimator's)

    @property
    def launcher(self) -> str:
        return self.script or self.estimator


# The OPSD baseline: ONE frozen teacher that sees the reference answer (paper Sec. 4: "we
# provide the teacher with the ground-truth answer", Tab. 11: fixed teacher), always imitated
# (no polarity), as the official release trained it (opsd_train.py --beta 0 --jsd_token_clip
# 0.05 at temperature 1.1): the forward KL of the teacher's distribution, each term clipped at
# 0.05, averaged over every response token — here on the teacher's top-100 ids plus a tail
# bin (docs/decisions.md). ``opsd_rkl`` keeps the sampled-token reverse-KL form.
_OPSD_TEACHER = ("sgsd.teacher_context=answer", "sgsd.teacher=frozen", "sgsd.ablation.use_polarity=false",
                 "sgsd.update.enable=false", "sgsd.update.track_utility=false")
_OPSD = (*_OPSD_TEACHER, "sgsd.ablation.loss_type=fkl", "sgsd.teacher_topk=100", "sgsd.divergence_clip=0.05",
         "sgsd.ablation.use_token_mask=false", "sgsd.logprob_temperature=1.1")
_TOP100 = ("sgsd.teacher_topk=100",)  # the teacher's top-100 distribution (Fig. 3a's support)

# A moving teacher (ema, periodic) is updated on each rank's FSDP2 shards (recipe/sgsd/teacher_weights.py):
# its variants also switch verl's FSDP1 default to FSDP2 (the same model, optimizer and mixed precision).
_FSDP2 = "actor_rollout_ref.actor.strategy=fsdp2"

# The sibling methods (docs/methods.md) on the GRPO script's backbone (n = 8 rollouts, its sampling,
# its temperature for every log-prob): GRPO's loss + verl's KL to the reference (low_var_kl, 0.01) +
# sgsd.distill_coef x the method's loss on ONE teacher; the SGSD trainer runs them (estimator sgsd:
# GRPO's advantages with n > 1). Skill-SD's lambda 0.001 (its AppWorld sweep), SDAR's 0.01, beta 5.
_GRPO_BACKBONE = ("actor_rollout_ref.actor.use_kl_loss=true", "actor_rollout_ref.actor.kl_loss_coef=0.01",
                  "actor_rollout_ref.actor.kl_loss_type=low_var_kl")
_SKILL_SD_TEACHER = (*_GRPO_BACKBONE, "sgsd.method=skill_sd")
_SKILL_SD = (*_SKILL_SD_TEACHER, "sgsd.distill_coef=0.001")
_SDAR = (*_GRPO_BACKBONE, "sgsd.method=sdar", "sgsd.distill_coef=0.01")
_SKILL_SD_PAPER = "Skill-SD"
_SDAR_PAPER = "SDAR"


def _sibling(name: str, paper: str, description: str, overrides: tuple[str, ...]) -> Variant:
    return Variant(name, paper, description, overrides, estimator="sgsd", script="grpo")


_SIBLINGS = (
    _sibling("skill_sd", _SKILL_SD_PAPER, "Skill-SD: GRPO + KL + 0.001 x L_SDL to one live teacher that sees a "
             "UCB-chosen trajectory summary of the problem's earlier rollouts", _SKILL_SD),
    _sibling("skill_sd_frozen", _SKILL_SD_PAPER, "Skill-SD with the initial policy as the teacher",
             (*_SKILL_SD, "sgsd.teacher=frozen")),
    *(_sibling(f"skill_sd_lambda_{tag}", _SKILL_SD_PAPER, f"Skill-SD with lambda = {value} (its sweep)",
               (*_SKILL_SD_TEACHER, f"sgsd.distill_coef={value}"))
      for tag, value in (("1e-2", "0.01"), ("5e-3", "0.005"), ("5e-4", "0.0005"))),
    _sibling("sdar", _SDAR_PAPER, "SDAR: GRPO + KL + 0.01 x the gated L_SDAR (gap gate, beta 5, reverse KL) to one "
             "live teacher with the keyword-matched skill files as privileged information", _SDAR),
    *(_sibling(f"sdar_beta_{beta}", _SDAR_PAPER, f"SDAR with gate sharpness beta = {beta}",
               (*_SDAR, f"sgsd.sdar.beta={beta}")) for beta in ("1", "10")),
    _sibling("sdar_gate_entropy", _SDAR_PAPER, "SDAR with the student-entropy gate",
             (*_SDAR, "sgsd.sdar.gate=entropy")),
    _sibling("sdar_gate_softor", _SDAR_PAPER, "SDAR with the soft-OR of the gap and entropy gates",
             (*_SDAR, "sgsd.sdar.gate=soft_or")),
    _sibling("sdar_fkl", _SDAR_PAPER, "SDAR with the gated forward KL of the teacher's top-100 distribution",
             (*_SDAR, "sgsd.sdar.divergence=forward_kl", *_TOP100)),
    _sibling("sdar_jsd", _SDAR_PAPER, "SDAR with the gated JSD (beta 0.5) of the teacher's top-100 distribution",
             (*_SDAR, "sgsd.sdar.divergence=jsd", *_TOP100)),
    *(_sibling(f"sdar_retrieval_{strategy}", _SDAR_PAPER, f"SDAR with {what} skill retrieval",
               (*_SDAR, f"sgsd.skills.strategy={strategy}"))
      for strategy, what in (("ucb", "UCB1 (per problem, on the verifier reward)"),
                             ("keyword", "keyword (its default, named)"), ("full", "full (every skill file)"),
                             ("random", "random (one skill file)"))),
    _sibling("grpo_opsd", _SDAR_PAPER, "GRPO+OPSD: SDAR's loss ungated (beta 0: g = 0.5)",
             (*_SDAR, "sgsd.sdar.beta=0")),
    _sibling("sdar_opsd", _SDAR_PAPER, "OPSD: the ungated distillation alone (beta 0, weight 1), no policy "
             "gradient and no KL, on the same teacher and rollouts",
             ("sgsd.method=sdar", "sgsd.sdar.beta=0", "sgsd.distill_coef=1.0", "sgsd.policy_gradient=false")),
    _sibling("rlsd", _SDAR_PAPER, "RLSD: GRPO advantages reweighted per token by the skill-conditioned teacher's "
             "gap (lambda 0.5 decayed to 0 over 100 steps, eps 0.2); no distillation term",
             (*_GRPO_BACKBONE, "sgsd.method=rlsd")),
)

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("sgsd", "Tab. 3", "SGSD as in the paper (the recipe's defaults)"),
    Variant("grpo", "Tab. 3", "GRPO: verl's estimator on the same recipe", estimator="grpo"),
    Variant("grpo_skill", "Tab. 3", "GRPO+Skill: retrieved skills in the student prompt during training only",
            estimator="grpo", student_skills=True),
    Variant("opsd", "Tab. 3", "OPSD as the release trained it: one frozen answer-conditioned teacher, always "
            "imitated, clipped forward KL of its top-100 distribution", _OPSD),
    Variant("opsd_rkl", "Tab. 3", "OPSD with the sampled-token reverse-KL objective (no distribution, no clip)",
            (*_OPSD_TEACHER, "sgsd.ablation.loss_type=sampled_rkl")),
    Variant("opsd_skill", "Tab. 3", "OPSD+Skill: student and teacher see the retrieved skills; the teacher "
            "also the answer", ("sgsd.teacher_context=answer_skills", *_OPSD[1:]),
            student_skills=True),
    Variant("no_token_mask", "Tab. 4", "SGSD without the token mask", ("sgsd.ablation.use_token_mask=false",)),
    Variant("no_clip", "Tab. 4", "SGSD without gap clipping in the support score", ("sgsd.ablation.use_clip=false",)),
    Variant("no_threshold", "Tab. 4", "SGSD without the neutral zone (eps_a = 0)",
            ("sgsd.ablation.use_threshold=false",)),
    Variant("no_robust", "Tab. 4", "SGSD without token mask, clipping and threshold",
            ("sgsd.ablation.use_token_mask=false", "sgsd.ablation.use_clip=false",
             "sgsd.ablation.use_threshold=false")),
    Variant("no_polarity", "Fig. 4", "SGSD with every teacher distilled (rho = +1)",
            ("sgsd.ablation.use_polarity=false",)),
    Variant("single_teacher", "Sec. 4.3", "SGSD with K = 1 teacher", ("sgsd.top_k=1",)),
    Variant("rkl", "Fig. 3c", "SGSD with the sampled-token reverse-KL objective instead of the gate",
            ("sgsd.ablation.loss_type=sampled_rkl",)),
    Variant("fkl", "Fig. 3c", "SGSD with the forward KL of each teacher's top-100 distribution instead of the gate",
            ("sgsd.ablation.loss_type=fkl", *_TOP100)),
    Variant("jsd", "Fig. 3c", "SGSD with the Jensen-Shannon divergence (beta 0.5) of each teacher's top-100 "
            "distribution instead of the gate", ("sgsd.ablation.loss_type=jsd", *_TOP100)),
    Variant("top100_support", "Fig. 3a", "SGSD on the teacher's top-100 local support: both distributions "
            "renormalised there, polarity from the local gap, the gate on the local KL",
            ("sgsd.ablation.loss_type=local_gated", *_TOP100)),
    Variant("frozen_teacher", "Fig. 3b", "SGSD with the initial policy as a fixed teacher", ("sgsd.teacher=frozen",)),
    Variant("ema_teacher", "Fig. 3b", "SGSD with an EMA of the policy as the teacher (decay "
            "sgsd.teacher_ema_decay, 0.999)", ("sgsd.teacher=ema", _FSDP2)),
    Variant("periodic_teacher", "Fig. 3b", "SGSD with a copy of the policy refreshed every "
            "sgsd.teacher_period (50) steps as the teacher", ("sgsd.teacher=periodic", _FSDP2)),
    Variant("answer_pi", "Fig. 3d", "SGSD with the reference answer added to every teacher",
            ("sgsd.reference_answer_in_teacher=true",)),
    *_SIBLINGS,
)}
# The paper's "w/o all" row of Tab. 4 under its own name too.
VARIANTS["no_all"] = Variant("no_all", "Tab. 4", VARIANTS["no_robust"].description, VARIANTS["no_robust"].overrides)


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m recipe.sgsd.variants", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    for cmd in ("overrides", "show"):
        sub.add_parser(cmd).add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "list":
            for v in VARIANTS.values():
                data = ", student prompt with skills" if v.student_skills else ""
                print(f"{v.name:22s} {v.launcher:5s} {v.paper:9s} {v.description}{data}")
            return 0
        variant = get_variant(args.name)
    except ValueError as exc:
        print(f"variants: error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "overrides":
        print("\n".join(variant.overrides))
    else:
        print(f"name={variant.name}\nestimator={variant.estimator}\nscript={variant.launcher}\n"
              f"student_skills={int(variant.student_skills)}")
        print("\n".join(variant.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
