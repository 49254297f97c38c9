"""The `sgsd:` settings: defaults are the paper's, every bad value names its key."""

from __future__ import annotations

import pytest

from sgsd.config import ConfigError, SGSDConfig


def test_defaults_are_the_papers_tab_12():
    cfg = SGSDConfig.from_mapping({})
    assert (cfg.top_k, cfg.tau, cfg.clip, cfg.threshold, cfg.teacher) == (8, 1.0, 3.0, 0.05, "live")
    assert (cfg.student_thinking, cfg.teacher_thinking) == (False, True)
    assert (cfg.update.freq, cfg.update.success_threshold, cfg.update.max_new_items, cfg.update.capacity) == (
        25, 0.8, 5, 30)
    obj = cfg.objective_config()
    assert (obj.tau, obj.clip, obj.threshold, obj.loss_type) == (1.0, 3.0, 0.05, "gated")


def test_nested_values_and_int_to_float():
    cfg = SGSDConfig.from_mapping({"tau": 2, "ablation": {"use_polarity": False, "loss_type": "sampled_rkl"},
                                   "mask": {"newline": False}, "update": {"enable": True, "freq": 2}})
    assert cfg.tau == 2.0 and isinstance(cfg.tau, float)
    assert cfg.objective_config().use_polarity is False and cfg.objective_config().loss_type == "sampled_rkl"
    assert cfg.mask.newline is False
    assert cfg.update.enable and cfg.update.freq == 2


@pytest.mark.parametrize("data, message", [
    ({"top_k": 0}, r"sgsd\.top_k=0 is out of range: must be >= 1"),
    ({"tau": -1.0}, r"sgsd\.tau=-1\.0 is out of range"),
    ({"threshold": -0.1}, r"sgsd\.threshold"),
    ({"teacher": "swa"}, r"sgsd\.teacher='swa' is not one of live, frozen, ema, periodic"),
    ({"teacher": "ema", "teacher_ema_decay": 1.0},
     r"sgsd\.teacher_ema_decay=1\.0 is out of range: must be in \(0, 1\)"),
    ({"teacher_ema_decay": 0}, r"sgsd\.teacher_ema_decay=0\.0 is out of range: must be in \(0, 1\)"),
    ({"teacher_ema_decay": -0.5}, r"sgsd\.teacher_ema_decay=-0\.5 is out of range"),
    ({"teacher_ema_decay": float("nan")}, r"sgsd\.teacher_ema_decay=nan is out of range: must be a finite number"),
    ({"teacher": "periodic", "teacher_period": 0}, r"sgsd\.teacher_period=0 is out of range: must be >= 1"),
    ({"teacher_period": 2.5}, r"sgsd\.teacher_period=2\.5 must be int, got float"),
    ({"ablation": {"loss_type": "kl"}},
     r"sgsd\.ablation\.loss_type='kl' is not one of gated, sampled_rkl, local_gated, fkl, jsd"),
    ({"ablation": {"loss_type": "fkl"}}, r"loss_type=fkl reads the teacher's top-k distribution: set sgsd\.teacher_topk"),
    ({"teacher_topk": 100}, r"sgsd\.teacher_topk=100 is read only by the loss types local_gated, fkl, jsd"),
    ({"teacher_topk": -1}, r"sgsd\.teacher_topk=-1 is out of range: must be >= 0"),
    ({"teacher_topk": 5, "ablation": {"loss_type": "jsd"}, "jsd_beta": 1.0},
     r"sgsd\.jsd_beta=1\.0 is out of range: must be in \(0, 1\)"),
    ({"teacher_topk": 5, "ablation": {"loss_type": "fkl"}, "divergence_clip": 0},
     r"sgsd\.divergence_clip=0\.0 is out of range: must be > 0 or null"),
    ({"update": {"success_threshold": 1.5}}, r"sgsd\.update\.success_threshold=1\.5 is out of range"),
    ({"topk": 8}, r"unknown key sgsd\.topk"),
    ({"mask": {"newlines": False}}, r"unknown key sgsd\.mask\.newlines"),
    ({"top_k": "8"}, r"sgsd\.top_k='8' must be int, got str"),
    ({"student_thinking": "yes"}, r"sgsd\.student_thinking='yes' must be true or false"),
    ({"clip": True}, r"sgsd\.clip=True must be float, got bool"),
    # inf passed every range check (inf > 0), nan every comparison
    ({"tau": float("inf")}, r"sgsd\.tau=inf is out of range: must be a finite number"),
    ({"clip": float("inf")}, r"sgsd\.clip=inf is out of range: must be a finite number"),
    ({"threshold": float("nan")}, r"sgsd\.threshold=nan is out of range: must be a finite number"),
    ({"mask": {"newline_rule": "spaces"}},
     r"sgsd\.mask\.newline_rule='spaces' is out of range: must be one of whitespace, newlines_only"),
    ({"encoder": None}, r"sgsd\.encoder must not be null"),
    ({"bank_path": ""}, r"sgsd\.bank_path is empty"),
    ({"ablation": [1]}, r"sgsd\.ablation must be a mapping, got list"),
    # held by the library objects the trainer builds (RetrievalConfig,
    # ObjectiveConfig, GenerationSettings), worded with the key
    ({"alpha_temperature": 0.0}, r"sgsd\.alpha_temperature=0\.0 is out of range: must be > 0"),
    ({"eps": 0.0}, r"sgsd\.eps=0\.0 is out of range: must be > 0"),
    ({"update": {"max_new_tokens": 0}}, r"sgsd\.update\.max_new_tokens=0 is out of range: must be >= 1"),
    ({"update": {"temperature": -1.0}}, r"sgsd\.update\.temperature=-1\.0 is out of range: must be >= 0"),
    ({"update": {"top_p": 1.5}}, r"sgsd\.update\.top_p=1\.5 is out of range: must be in \(0, 1\]"),
])
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        SGSDConfig.from_mapping(data)


def test_nullable_keys_accept_null():
    assert SGSDConfig.from_mapping({"bank_output_dir": None}).bank_output_dir is None


# ------------------------------------------------------------------ the sibling methods
@pytest.mark.parametrize("method, source, strategy, context, aggregation", [
    ("sgsd", "bank", None, "skills", "problem_mean"),
    ("skill_sd", "summaries", "ucb", "skill_sd", "token_mean"),
    ("sdar", "files", "keyword", "sdar", "token_mean"),
    ("rlsd", "files", "keyword", "sdar", "token_mean"),
])
def test_each_method_brings_its_own_skills_context_and_reduction(method, source, strategy, context, aggregation):
    cfg = SGSDConfig.from_mapping({"method": method})
    assert (cfg.skill_source, cfg.skill_strategy, cfg.context, cfg.loss_aggregation) == (source, strategy, context,
                                                                                           aggregation)
    assert cfg.teacher_slots == (8 if method == "sgsd" else 1)
    assert cfg.distills == (method != "rlsd")
    assert cfg.hybrid(8) and not cfg.hybrid(1)
    assert not SGSDConfig.from_mapping({"method": method if method != "rlsd" else "sdar",
                                        "policy_gradient": False}).hybrid(8)


def test_sibling_settings_reach_the_library_configs():
    cfg = SGSDConfig.from_mapping({"method": "sdar", "aggregation": "problem_mean", "teacher_topk": 5,
                                   "divergence_clip": 0.1, "sdar": {"beta": 2, "gate": "soft_or",
                                                                    "divergence": "jsd"}})
    sdar = cfg.sdar_config()
    assert (sdar.beta, sdar.gate, sdar.divergence, sdar.divergence_clip, sdar.aggregation) == (
        2.0, "soft_or", "jsd", 0.1, "problem_mean")
    assert cfg.uses_distribution
    skill_sd = SGSDConfig.from_mapping({"method": "skill_sd", "skill_sd": {"k3_clip": 5}}).skill_sd_config()
    assert (skill_sd.k3_clip, skill_sd.log_ratio_clip, skill_sd.aggregation) == (5.0, 10.0, "token_mean")
    assert SGSDConfig.from_mapping({"method": "rlsd", "rlsd": {"decay_steps": 7}}).rlsd_config().decay_steps == 7


@pytest.mark.parametrize("data, message", [
    ({"method": "dpo"}, r"sgsd.method='dpo' is not one of sgsd, skill_sd, sdar, rlsd"),
    ({"aggregation": "token_mean"}, r"sgsd.aggregation=token_mean applies to sgsd.method=skill_sd \| sdar"),
    ({"method": "sdar", "aggregation": "sum"}, r"sgsd.aggregation='sum' is not one of"),
    ({"method": "sdar", "teacher_context": "answer"}, r"sgsd.teacher_context=answer is an SGSD setting"),
    ({"method": "skill_sd", "ablation": {"loss_type": "fkl"}}, r"sgsd.ablation.loss_type=fkl is an SGSD setting"),
    ({"method": "sdar", "reference_answer_in_teacher": True}, r"reference_answer_in_teacher=true is an SGSD"),
    ({"method": "sdar", "sdar": {"divergence": "jsd"}}, r"sgsd.sdar.divergence=jsd reads the teacher's top-k"),
    ({"method": "sdar", "teacher_topk": 10}, r"sgsd.teacher_topk=10 is not read: sgsd.sdar.divergence=reverse_kl"),
    ({"method": "skill_sd", "teacher_topk": 10}, r"sgsd.teacher_topk=10 is not read: sgsd.method=skill_sd"),
    ({"method": "sdar", "sdar": {"beta": -1}}, r"sgsd.sdar.beta=-1.0 is out of range: must be >= 0"),
    ({"method": "sdar", "sdar": {"gate": "max"}}, r"sgsd.sdar.gate='max' is not one of gap, entropy, soft_or"),
    ({"method": "skill_sd", "skill_sd": {"k3_clip": 0}}, r"sgsd.skill_sd.k3_clip=0.0 is out of range"),
    ({"method": "rlsd", "rlsd": {"lam": 2}}, r"sgsd.rlsd.lam=2.0 is out of range: must be in \[0, 1\]"),
    ({"method": "rlsd", "rlsd": {"decay_steps": 0}}, r"sgsd.rlsd.decay_steps=0 is out of range"),
    ({"method": "rlsd", "policy_gradient": False}, r"sgsd.policy_gradient=false leaves sgsd.method=rlsd nothing"),
    ({"method": "skill_sd", "skills": {"strategy": "keyword"}}, r"trajectory summaries .* have none"),
    ({"method": "sdar", "skills": {"strategy": "bm25"}}, r"sgsd.skills.strategy='bm25' is not one of"),
    ({"method": "sdar", "skills": {"top_k": 0}}, r"sgsd.skills.top_k=0 is out of range"),
    ({"method": "sdar", "skills": {"files": ""}}, r"sgsd.skills.files is empty"),
    ({"method": "sdar", "skills": {"source": "bank"}}, r"sgsd.skills.source='bank' is not one of summaries, files"),
    ({"method": "sdar", "skills": {"typo": 1}}, r"unknown key sgsd.skills.typo"),
])
def test_sibling_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        SGSDConfig.from_mapping(data)
