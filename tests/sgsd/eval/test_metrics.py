"""Avg@k, pass@k and maj@k (:mod:`sgsd.eval.metrics`) on hand-made cases."""

from __future__ import annotations

import math

import pytest

from sgsd.eval.metrics import (
    CORRECT_KEY,
    GradedSample,
    majority_score,
    pass_at_k,
    score_problem,
    verifier_equivalent,
    vote_keys,
)


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 1, 0.25), (4, 1, 2, 1 - 3 / 6), (5, 2, 3, 1 - 1 / 10), (4, 0, 2, 0.0), (4, 4, 1, 1.0),
    (12, 1, 12, 1.0), (12, 3, 10, 1.0),  # n - c < k: every k-subset holds a correct sample
])
def test_pass_at_k_hand_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_combinatorial_formula_and_rejects_k_above_n():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


@pytest.mark.parametrize("keys, expected", [
    ([CORRECT_KEY, "7", "7"], 0.0),                  # a wrong majority
    ([CORRECT_KEY, CORRECT_KEY, "7"], 1.0),
    ([CORRECT_KEY, "7"], 0.5),                       # two-way tie: a random tie-break is right half the time
    ([CORRECT_KEY, "7", "8"], 1 / 3),                # three-way tie
    (["7", "8", CORRECT_KEY, CORRECT_KEY, "8"], 0.5),  # a tie between the two largest groups
    ([None, None, CORRECT_KEY], 1.0),                # samples without an answer abstain
    ([None, None], 0.0),                             # nobody voted
])
def test_majority_score_and_ties(keys, expected):
    assert majority_score(keys) == pytest.approx(expected)


def test_vote_keys_group_correct_answers_and_equivalent_wrong_ones():
    samples = [GradedSample("\\frac{1}{2}", True), GradedSample("0.5", True),  # both correct: one vote group
               GradedSample("3", False), GradedSample("\\dfrac{6}{2}", False), GradedSample("3.0", False),
               GradedSample(None, False)]
    by_string = vote_keys(samples, equivalent=None)
    assert by_string[:2] == [CORRECT_KEY, CORRECT_KEY] and by_string[5] is None
    assert len({by_string[2], by_string[3], by_string[4]}) == 3  # strings alone: three wrong groups
    assert majority_score(by_string) == 1.0
    by_value = vote_keys(samples, equivalent=verifier_equivalent)  # math-verify: 3 = 6/2 = 3.0
    assert by_value[2] == by_value[3] == by_value[4] != CORRECT_KEY
    assert majority_score(by_value) == 0.0
    assert vote_keys([GradedSample("\\dfrac{1}{3}", False), GradedSample("\\frac{1}{3}", False)],
                     equivalent=None)[0] == vote_keys([GradedSample("\\frac{1}{3}", False)], equivalent=None)[0]


def test_score_problem_uses_the_first_k_samples_for_the_vote():
    samples = [GradedSample("5", False), GradedSample("5", False)] + [GradedSample("2", True)] * 3
    score = score_problem(samples, k=2, equivalent=None)
    assert (score.samples, score.correct, score.with_answer) == (5, 3, 5)
    assert score.accuracy == pytest.approx(0.6)
    assert score.pass_at_k == pytest.approx(1 - 1 / 10)
    assert score.maj_at_k == 0.0  # the first two samples agree on a wrong answer
    assert score_problem(samples, k=5, equivalent=None).maj_at_k == 1.0
    assert score_problem(samples[:2], k=12, equivalent=None).pass_at_k == 0.0  # k capped at n
