"""Retrieval with the real packaged MiniLM encoder: pairing, alpha, caches, query prompts."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from sgsd.bank import CommonMistake, GeneralSkill, SkillBank
from sgsd.checks import SettingError
from sgsd.datasets import benchmark_path, load_problems
from sgsd.retrieval import RetrievalConfig, SentenceTransformerEncoder, SkillRetriever


class CountingEncoder:
    """Wraps the real encoder and records every call (what a benchmark would report)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.query_calls: list[int] = []
        self.document_calls: list[int] = []

    def encode_queries(self, texts):
        self.query_calls.append(len(texts))
        return self.inner.encode_queries(texts)

    def encode_documents(self, texts):
        self.document_calls.append(len(texts))
        return self.inner.encode_documents(texts)


def _skill(i: int, title: str, principle: str = "principle", when: str = "when") -> GeneralSkill:
    return GeneralSkill(f"gen_{i:03d}", title, principle, when)


def _mistake(i: int, description: str) -> CommonMistake:
    return CommonMistake(f"err_{i:03d}", description, "because", "check it")


def test_shipped_bank_on_aime24_pairs_rank_wise_with_cosine_scores(shipped_bank, encoder):
    problems = [p.problem for p in load_problems(benchmark_path("aime24"))]
    retriever = SkillRetriever(encoder, shipped_bank, top_k=8)
    results = retriever.retrieve(problems)
    assert len(results) == 30 and all(r.num_teachers == 8 for r in results)
    # independent check: cosine of normalised embeddings, computed here
    q = encoder.encode_queries(problems[:3])
    g = encoder.encode_documents([s.retrieval_text for s in shipped_bank.general_skills])
    e = encoder.encode_documents([m.retrieval_text for m in shipped_bank.common_mistakes])
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    for i in range(3):
        sg, se = q[i] @ g.T, q[i] @ e.T
        teachers = results[i].teachers
        assert [t.skill.skill_id for t in teachers] == [shipped_bank.general_skills[j].skill_id
                                                         for j in np.argsort(-sg, kind="stable")[:8]]
        assert [t.mistake.mistake_id for t in teachers] == [shipped_bank.common_mistakes[j].mistake_id
                                                             for j in np.argsort(-se, kind="stable")[:8]]
        assert [t.skill_score for t in teachers] == pytest.approx(sorted(sg, reverse=True)[:8], abs=1e-5)
        # eq. 6: alpha_k = softmax_k((s_g + s_e) / 2)
        s = np.array([(t.skill_score + t.mistake_score) / 2 for t in teachers])
        expected = np.exp(s) / np.exp(s).sum()
        assert [t.alpha for t in teachers] == pytest.approx(expected.tolist(), rel=1e-6)
        assert sum(t.alpha for t in teachers) == pytest.approx(1.0)
        assert [t.rank for t in teachers] == list(range(8))


def test_the_relevant_skill_ranks_first(encoder):
    bank = SkillBank(
        general_skills=(
            _skill(1, "Use modular arithmetic and Fermat's little theorem for remainders of large powers"),
            _skill(2, "Apply the angle bisector theorem to split the opposite side of a triangle"),
            _skill(3, "Count favourable outcomes over total outcomes for probability"),
        ),
        common_mistakes=(
            _mistake(1, "Forgetting that the bisector divides the side in the ratio of adjacent sides"),
            _mistake(2, "Reducing exponents modulo p instead of modulo p - 1"),
            _mistake(3, "Double counting arrangements that are identical under symmetry"),
        ),
    )
    retriever = SkillRetriever(encoder, bank, top_k=3)
    [mod, tri] = retriever.retrieve([
        "What is the remainder when 3^{2024} is divided by 7?",
        "In triangle ABC the bisector of angle A meets BC at D. If AB = 6 and AC = 9, find BD/DC.",
    ])
    assert (mod.teachers[0].skill.skill_id, mod.teachers[0].mistake.mistake_id) == ("gen_001", "err_002")
    assert (tri.teachers[0].skill.skill_id, tri.teachers[0].mistake.mistake_id) == ("gen_002", "err_001")


def test_teacher_count_is_min_of_k_skills_and_mistakes(encoder):
    bank = SkillBank(
        general_skills=tuple(_skill(i, f"skill about topic {i}") for i in range(3)),
        common_mistakes=tuple(_mistake(i, f"mistake about topic {i}") for i in range(5)),
    )
    retriever = SkillRetriever(encoder, bank, top_k=8)
    assert retriever.retrieve(["a problem"])[0].num_teachers == 3
    assert retriever.retrieve(["a problem"], top_k=2)[0].num_teachers == 2
    empty = SkillRetriever(encoder, bank.with_items(common_mistakes=()), top_k=8)
    assert empty.retrieve(["a problem", "another"])[0].num_teachers == 0


def test_alpha_temperature(encoder, shipped_bank):
    retriever = SkillRetriever(encoder, shipped_bank, top_k=4, temperature=1.0)
    flat = retriever.retrieve(["Solve x^2 - 5x + 6 = 0."])[0]
    retriever.temperature = 0.01
    sharp = retriever.retrieve(["Solve x^2 - 5x + 6 = 0."])[0]
    s = np.array([(t.skill_score + t.mistake_score) / 2 for t in sharp.teachers]) / 0.01
    expected = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    assert [t.alpha for t in sharp.teachers] == pytest.approx(expected.tolist(), rel=1e-5)
    assert sharp.teachers[0].alpha > flat.teachers[0].alpha
    with pytest.raises(ValueError, match="temperature"):
        SkillRetriever(encoder, temperature=0.0)


def test_caches_encode_only_new_bank_items_and_new_problems(encoder, shipped_bank):
    counting = CountingEncoder(encoder)
    retriever = SkillRetriever(counting, shipped_bank, top_k=8)
    n_items = len(shipped_bank.general_skills) + len(shipped_bank.common_mistakes)
    assert counting.document_calls == [n_items]
    assert retriever.set_bank(shipped_bank) == 0 and counting.document_calls == [n_items]
    new_skills = [_skill(900, "Telescope a sum by partial fractions"),
                  _skill(901, "Use Pick's theorem for the area of a lattice polygon"),
                  _skill(902, "Vieta jumping on a Diophantine equation")]
    new_mistakes = [_mistake(900, "Dropping boundary lattice points"), _mistake(901, "Sign error in a telescoping sum")]
    grown = shipped_bank.with_items(general_skills=[*shipped_bank.general_skills, *new_skills],
                                    common_mistakes=[*shipped_bank.common_mistakes, *new_mistakes])
    assert retriever.set_bank(grown) == 5 and counting.document_calls[-1] == 5
    # a retrieval after the refresh sees the new items
    hit = retriever.retrieve(["Find the area of a polygon whose vertices are lattice points, counting interior and boundary points."])[0]
    assert hit.teachers[0].skill.skill_id == "gen_901"

    problems = ["p one", "p two", "p one", "p three"]
    retriever.retrieve(problems)
    assert counting.query_calls[-1] == 3  # one call, duplicates encoded once
    calls = len(counting.query_calls)
    retriever.retrieve(["p two", "p three"])
    assert len(counting.query_calls) == calls  # all cached: no encoder call at all
    retriever.retrieve(["p two", "p four", "p five"])
    assert counting.query_calls[-1] == 2


def test_query_lru_is_bounded(encoder):
    bank = SkillBank(general_skills=(_skill(1, "a skill"),), common_mistakes=(_mistake(1, "a mistake"),))
    retriever = SkillRetriever(encoder, bank, query_cache_size=2)
    retriever.retrieve(["a", "b", "c"])
    assert len(retriever._query_cache) == 2
    retriever.retrieve(["a"])
    assert retriever.last_queries_encoded == 1  # "a" was evicted


def test_the_models_query_prompt_is_used_only_when_the_spec_asks_for_it(tmp_path):
    """Plain (the release's retrieval): problems and items encoded alike; ``#prompts``: the
    model's own query prompt on problems."""
    from sentence_transformers import SentenceTransformer

    from sgsd.retrieval import resolve_encoder_path

    instruction = "Represent this math problem for retrieving skills: "
    model = SentenceTransformer(resolve_encoder_path(None), device="cpu", prompts={"query": instruction, "document": ""})
    model.save(str(tmp_path / "prompted"))
    text = "Find all real x with x^2 = 4."
    plain = SentenceTransformerEncoder(str(tmp_path / "prompted"))
    q, d = plain.encode_queries([text])[0], plain.encode_documents([text])[0]
    assert np.allclose(q, d, atol=1e-6) and not plain.use_prompts
    assert np.allclose(q, model.encode([text], normalize_embeddings=True)[0], atol=1e-5)
    prompted = SentenceTransformerEncoder(str(tmp_path / "prompted") + "#prompts")
    q, d = prompted.encode_queries([text])[0], prompted.encode_documents([text])[0]
    assert prompted.name.endswith("#prompts") and not np.allclose(q, d, atol=1e-4)
    direct = model.encode([instruction + text], normalize_embeddings=True)[0]
    assert np.allclose(q, direct, atol=1e-5)
    assert math.isclose(float(np.linalg.norm(q)), 1.0, rel_tol=1e-5)


def test_missing_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder path does not exist"):
        SentenceTransformerEncoder(str(tmp_path / "no-such-encoder"))


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 0}, "top_k must be >= 1, got 0"),
    ({"top_k": 2.0}, "top_k must be an integer, got 2.0"),
    ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
    ({"temperature": -1.0}, "temperature must be > 0, got -1.0"),
])
def test_retrieval_config_refuses_bad_values_for_every_caller(encoder, kwargs, message):
    with pytest.raises(SettingError) as info:
        RetrievalConfig(**kwargs)
    assert str(info.value) == message
    with pytest.raises(SettingError, match=re.escape(message)):
        SkillRetriever(encoder, **kwargs)
    retriever = SkillRetriever(encoder, SkillBank(general_skills=(_skill(1, "t"),), common_mistakes=(_mistake(1, "d"),)))
    with pytest.raises(SettingError, match=r"top_k must be >= 1, got 0"):
        retriever.retrieve(["x"], top_k=0)


def test_retrieve_without_bank_is_an_error(encoder):
    with pytest.raises(RuntimeError, match="set_bank"):
        SkillRetriever(encoder).retrieve(["x"])


def test_encoder_device_auto_falls_back_to_the_cpu_and_an_unseen_gpu_is_refused(caplog):
    import logging

    import torch

    from sgsd.retrieval import SentenceTransformerEncoder, resolve_device

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only fallback")
    with caplog.at_level(logging.INFO, logger="sgsd.retrieval"):
        encoder = SentenceTransformerEncoder(device="auto")
    assert encoder.device == "cpu" and str(encoder.model.device) == "cpu"
    assert "sees no CUDA device" in caplog.text
    assert resolve_device("cpu") == "cpu" and resolve_device(None) is None
    with pytest.raises(ValueError, match="'cuda:1'.*sees no CUDA device.*'auto'"):
        resolve_device("cuda:1")
