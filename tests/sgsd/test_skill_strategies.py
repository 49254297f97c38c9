"""Retrieval strategies over skill sources: UCB against a hand-computed sequence, keyword rules,
random's seeding, embedding ranking with the packaged MiniLM encoder."""

from __future__ import annotations

import math

import pytest

from sgsd.checks import SettingError
from sgsd.skill_sources import Skill
from sgsd.skill_strategies import (
    STRATEGIES,
    EmbeddingStrategy,
    FullStrategy,
    KeywordStrategy,
    RandomStrategy,
    SkillStrategy,
    UCBStrategy,
    make_strategy,
)

A, B, C = Skill("A", "skill a"), Skill("B", "skill b"), Skill("C", "skill c")


def names(skills) -> list[str]:
    return [s.name for s in skills]


def test_ucb_follows_the_hand_computed_sequence():
    ucb = UCBStrategy()  # c = sqrt(2)
    rewards = {1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.0, 6: 1.0}
    chosen = []
    for t in range(1, 8):
        (arm,) = ucb.select("problem", [A, B, C])
        chosen.append(arm.name)
        if t in rewards:
            ucb.observe("problem", [arm.name], rewards[t])
    # t1-3: unpulled arms first, ties to the earlier candidate.
    # t4 (N=3): A = 1 + sqrt(2) sqrt(ln 3) = 2.482 > B = C = 1.482.
    # t5 (N=4): A = 0.5 + sqrt(2) sqrt(ln 4 / 2) = 1.6774 > B = C = sqrt(2) sqrt(ln 4) = 1.6651.
    # t6 (N=5): A = 1/3 + sqrt(2) sqrt(ln 5 / 3) = 1.3692 < B = C = 1.7941: B (the earlier).
    # t7 (N=6): A = 1.4263, B = 0.5 + sqrt(ln 6) = 1.8386, C = sqrt(2 ln 6) = 1.8930.
    assert chosen == ["A", "B", "C", "A", "A", "B", "C"]
    a, b, c = ucb.scores("problem", [A, B, C])
    assert a == pytest.approx(1 / 3 + math.sqrt(2) * math.sqrt(math.log(6) / 3))
    assert (b, c) == (pytest.approx(1.838566, abs=1e-6), pytest.approx(1.893019, abs=1e-6))
    assert ucb.pulls("problem", "A") == 3 and ucb.pulls("other", "A") == 0


def test_ucb_tasks_new_arms_evicted_arms_and_state():
    ucb = UCBStrategy(k=2, exploration=0.0)  # greedy once every arm is tried
    for arm, reward in (("A", 0.0), ("B", 1.0), ("C", 0.5)):
        ucb.observe("x", [arm], reward)
    assert names(ucb.select("x", [A, B, C])) == ["B", "C"]
    assert names(ucb.select("y", [A, B, C])) == ["A", "B"]  # another task: its own, unpulled arms
    D = Skill("D", "a new summary")
    assert names(ucb.select("x", [A, B, C, D]))[0] == "D"  # a new arm is tried first
    ucb.select("x", [B, C])  # A and D left the source: their statistics go
    assert ucb.pulls("x", "A") == 0 and ucb.pulls("x", "B") == 1
    restored = UCBStrategy(k=2, exploration=0.0)
    restored.load_state_dict(ucb.state_dict())
    assert restored.scores("x", [B, C]) == ucb.scores("x", [B, C])
    with pytest.raises(SettingError, match="reward must be a finite number"):
        ucb.observe("x", ["A"], float("nan"))
    with pytest.raises(SettingError, match="exploration"):
        UCBStrategy(exploration=-1.0)


def test_keyword_rules():
    general = Skill("general", "read twice")
    heat = Skill("heat", "use the microwave", ("heat", "microwave"))
    put = Skill("put", "place it", ("put",))
    light = Skill("light", "use the lamp", ("look at",))
    strategy = KeywordStrategy()
    skills = [general, heat, put, light]
    assert names(strategy.select("HEAT some egg and put it in the fridge", skills)) == ["general", "heat", "put"]
    assert names(strategy.select("Type the input on the computer", skills)) == ["general"]  # whole words only
    assert names(strategy.select("Look   at the bowl under the desklamp", skills)) == ["general", "light"]
    assert names(strategy.select("microwave-safe bowl", skills)) == ["general", "heat"]  # '-' ends a word
    assert strategy.select("nothing", [heat]) == ()


def test_random_is_seeded_and_independent_of_the_order_of_tasks():
    pool = [Skill(f"s{i}", f"text {i}") for i in range(10)]
    first, again, other = RandomStrategy(k=3, seed=7), RandomStrategy(k=3, seed=7), RandomStrategy(k=3, seed=8)
    draws = [names(first.select("p", pool)) for _ in range(5)]
    assert draws == [names(again.select("p", pool)) for _ in range(5)]
    assert draws != [names(other.select("p", pool)) for _ in range(5)]
    assert all(len(set(d)) == 3 for d in draws) and len({tuple(d) for d in draws}) > 1
    interleaved = RandomStrategy(k=3, seed=7)
    mixed = []
    for _ in range(5):
        interleaved.select("q", pool)  # another task's draws do not shift this one's
        mixed.append(names(interleaved.select("p", pool)))
    assert mixed == draws
    assert names(RandomStrategy(k=20).select("p", [A, B])) in (["A", "B"], ["B", "A"])
    state = first.state_dict()
    resumed = RandomStrategy(k=3, seed=7)
    resumed.load_state_dict(state)
    assert names(resumed.select("p", pool)) == names(first.select("p", pool))


def test_embedding_ranks_by_similarity_and_caches_skills(encoder):
    pool = [Skill("prob", "Probability: count favourable outcomes and divide by all outcomes."),
            Skill("tri", "Right triangles: use the Pythagorean theorem a^2 + b^2 = c^2."),
            Skill("mod", "Modular arithmetic: reduce every term modulo n first.")]
    strategy = EmbeddingStrategy(encoder, k=2)
    before = encoder.texts_encoded
    assert names(strategy.select("A right triangle has legs 3 and 4. How long is the hypotenuse?", pool))[0] == "tri"
    assert names(strategy.select("Two dice are rolled. What is the chance the sum is 7?", pool))[0] == "prob"
    assert encoder.texts_encoded - before == 3 + 2  # each skill once, then one query per call
    assert strategy.select("x", []) == ()


def test_full_and_factory():
    assert FullStrategy().select("p", [A, B]) == (A, B)
    for name in STRATEGIES:
        strategy = make_strategy(name, encoder=object())
        assert isinstance(strategy, SkillStrategy) and strategy.name == name
    with pytest.raises(ValueError, match="needs an encoder"):
        make_strategy("embedding")
    with pytest.raises(ValueError, match="unknown skill retrieval strategy 'bandit'"):
        make_strategy("bandit")
